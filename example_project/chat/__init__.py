"""The demo's chat app: a lobby, rooms with live member lists, and chat."""
