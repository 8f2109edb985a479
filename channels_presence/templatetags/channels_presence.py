"""``{% load channels_presence %}``: what the browser client needs from the settings.

``{% presence_close_codes %}`` renders the close codes in force
(``CLOSE_CODE``, ``LOGOUT_CODE``, ``REJECT_CODE``) as a JSON script element,
which ``readCloseCodes()`` in ``presence.js`` reads, so the page and the
server never disagree about which codes mean "do not reconnect".
"""

from __future__ import annotations

from django import template
from django.utils.html import json_script
from django.utils.safestring import SafeString

from ..conf import get_settings

register = template.Library()

#: The element id ``readCloseCodes()`` looks for by default.
CLOSE_CODES_ELEMENT_ID = "presence-close-codes"


def close_codes() -> dict[str, int]:
    """The terminal close codes by the reason the browser client gives them."""
    settings = get_settings()
    return {
        "superseded": settings.CLOSE_CODE,
        "logged_out": settings.LOGOUT_CODE,
        "rejected": settings.REJECT_CODE,
    }


@register.simple_tag
def presence_close_codes(element_id: str = CLOSE_CODES_ELEMENT_ID) -> SafeString:
    """``<script type="application/json" id="presence-close-codes">{...}</script>``."""
    return json_script(close_codes(), element_id)
