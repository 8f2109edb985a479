"""The version matrix: the fast suite on each tested Python and Django pair.

    nox                            # every combination, one virtualenv each under .nox/
    nox -l                         # list them
    nox -s tests-3.13-django6.1    # one of them; arguments after -- go to pytest
    nox -s package                 # build, twine check, the fast suite from the sdist

Each session installs the package with its ``[tests]`` extra and one Django
series, then runs the suite without the slow markers (``e2e``, ``soak``,
``browser``: those run on the main combination, in ``.ci/run``), with
deprecation warnings as errors. A combination whose Python is not installed is
reported as skipped, naming the places that were searched.

Pythons are found on this machine only (never downloaded): pyenv's versions
first, since pyenv's ``pythonX.Y`` shims fail for any version that is not its
global one, then ``pythonX.Y`` on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import nox

#: (Python, Django series). The oldest Python with the oldest and the middle
#: Django, the newest Python with the middle and the newest Django, and 3.12
#: (the first Python Django 6 supports) with 6.0: every Python and Django
#: classifier in pyproject.toml is run by at least one of them.
MATRIX: tuple[tuple[str, str], ...] = (
    ("3.10", "4.2"),
    ("3.10", "5.2"),
    ("3.12", "6.0"),
    ("3.13", "5.2"),
    ("3.13", "6.1"),
)
#: Prints what a session really runs on.
VERSIONS = (
    "import sys, django, channels; "
    "print('Python', sys.version.split()[0], 'Django', django.get_version(), "
    "'channels', channels.__version__)"
)
#: The slow suites stay on the main combination (see .ci/run).
FAST = "not e2e and not soak and not browser"

nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = False
nox.options.reuse_venv = "yes"


def _runs_as(executable: str, version: str) -> bool:
    """Whether ``executable`` starts and is Python ``version`` (a pyenv shim may not start)."""
    try:
        done = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == version


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _patch_level(path: Path) -> tuple[int, ...]:
    """``(3, 13, 1)`` for ``.../versions/3.13.1/bin/python``; sorts newest last."""
    name = path.parent.parent.name
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def find_python(version: str) -> tuple[str | None, list[str]]:
    """The interpreter of Python ``version`` (``"3.12"``), or ``None``; and where it looked."""
    candidates: list[str] = []
    searched: list[str] = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        searched.append(f"pyenv prefix {version}")
        try:
            prefix = subprocess.run(
                [pyenv, "prefix", version], capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            prefix = ""
        if prefix:
            candidates.append(str(Path(prefix) / "bin" / "python"))
    installed = sorted(_pyenv_root().glob(f"versions/{version}.*/bin/python"), key=_patch_level)
    candidates += [str(path) for path in reversed(installed)]
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    searched += [f"{_pyenv_root()}/versions/{version}.*", f"python{version} on PATH"]
    for candidate in dict.fromkeys(candidates):
        if _runs_as(candidate, version):
            return candidate, searched
    return None, searched


def _tests_session(python: str, django: str) -> Callable[[nox.Session], None]:
    interpreter, searched = find_python(python)

    def tests(session: nox.Session) -> None:
        if interpreter is None:
            session.skip(f"Python {python} is not installed (searched {', '.join(searched)})")
        session.install("-e", ".[tests]", f"Django~={django}.0")
        session.run("python", "-c", VERSIONS)
        session.run(
            "python", "-m", "pytest", "-m", FAST,
            "-W", "error::DeprecationWarning", "-W", "error::PendingDeprecationWarning",
            *session.posargs,
            # Never the machine's own Redis: the suite starts a throwaway one.
            env={"REDIS_URL": None},
        )  # fmt: skip

    tests.__doc__ = f"The fast suite on Python {python} with Django {django}.x."
    # No interpreter: no virtualenv either, so the session can report its skip.
    return nox.session(name=f"tests-{python}-django{django}", python=interpreter or False)(tests)


for _python, _django in MATRIX:
    _tests_session(_python, _django)


@nox.session
def package(session: nox.Session) -> None:
    """Build the sdist and wheel, check them, and run the fast suite from the sdist alone."""
    session.install("build", "twine")
    tmp = Path(session.create_tmp()).resolve()
    dist, unpacked = tmp / "dist", tmp / "sdist"
    for old in (dist, unpacked):
        shutil.rmtree(old, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist))
    built = sorted(str(path) for path in dist.iterdir())
    session.run("python", "-m", "twine", "check", "--strict", *built)
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (root,) = unpacked.iterdir()
    # Installed from the sdist (not this checkout), tests run from its own tree.
    # --no-cache-dir: pip keys a wheel built from a local archive by its path,
    # so a cached build of an older sdist at the same path would be reused.
    session.install("--no-cache-dir", f"channels-presence[tests] @ {sdist.as_uri()}")
    session.chdir(root)
    session.run(
        "python", "-m", "pytest", "-m", FAST, "-p", "no:cacheprovider", *session.posargs,
        env={"REDIS_URL": None},
    )  # fmt: skip
