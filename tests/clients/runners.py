"""How each real client is started with nothing but the mounted Secret and its envFrom variables.

Every client runs the program in snippets/ that the README shows. Subprocess clients run their
sends concurrently; the two Java clients run all their sends in one JVM each, from classes
compiled once per test session (`JavaBuild`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.clients.secret import Mounted
from tests.clients.servers import Kind
from tests.system import missing, require_executable, require_file

SNIPPETS = Path(__file__).parent / "snippets"
JAKARTA_JARS = ("/usr/share/java/jakarta-mail.jar", "/usr/share/java/jakarta-activation.jar")
SYMFONY_AUTOLOAD = "/usr/share/php/Symfony/Component/Mailer/autoload.php"
RUBY_MAIL = "/usr/lib/ruby/vendor_ruby/mail.rb"
TIMEOUT = 90


def node_modules() -> Path:
    """Where tests/system/extra-npm.sh installs nodemailer (same rule as the script)."""
    root = os.environ.get("EMAIL_RECONCILER_NODE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "email-reconciler", "node")
    return Path(root) / "node_modules"


@dataclass(frozen=True)
class Job:
    kind: Kind
    mounted: Mounted
    to: str
    subject: str


def _base_env(mounted: Mounted) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.update(mounted.env)
    env["SENDER_DIR"] = str(mounted.dir)
    return env


def _ca(mounted: Mounted) -> str | None:
    ca = mounted.dir / "ca.crt"
    return str(ca) if ca.exists() else None


def _run(argv: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> str | None:
    """None when the client exited 0, else what it said (stderr and stdout, trimmed)."""
    try:
        proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"timed out after {TIMEOUT}s"
    if proc.returncode == 0:
        return None
    return (f"exit {proc.returncode}: " + (proc.stderr + proc.stdout).strip())[-2000:]


@dataclass(frozen=True)
class Client:
    """One client: what it needs installed, and how one send is started."""

    name: str
    requires: Callable[[], None]
    command: Callable[[Job], tuple[list[str], dict[str, str]]] | None = None
    ascii_password_only: bool = False  # Python's smtplib sends AUTH as ASCII
    can_refuse: bool = True
    batch: Callable[[list[Job]], list[str | None]] | None = field(default=None, repr=False)
    # Jakarta Mail 2.0's checkserveridentity matches DNS names only, not IP addresses in the
    # certificate, so the Java clients name the loopback server "localhost".
    host: str = "127.0.0.1"

    def run(self, jobs: list[Job]) -> list[str | None]:
        """One result per job: None for a successful send, else the client's error."""
        self.requires()
        if self.batch is not None:
            return self.batch(jobs)
        assert self.command is not None

        def one(job: Job) -> str | None:
            argv, extra = self.command(job)  # type: ignore[misc]
            return _run(argv, {**_base_env(job.mounted), **extra})

        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(one, jobs))


# --------------------------------------------------------------------------- Java


class JavaBuild:
    """Send.java, SpringBinding.java and Runner.java compiled once into `out`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._built: bool | None = None

    def classpath(self) -> str:
        return os.pathsep.join([str(self.out), *JAKARTA_JARS])

    def ensure(self) -> None:
        javac = require_executable("javac", "apt-get install default-jdk-headless")
        require_executable("java", "apt-get install default-jdk-headless")
        for jar in JAKARTA_JARS:
            require_file(jar, "apt-get install libjakarta-mail-java libjakarta-activation-java")
        if self._built is None:
            sources = [str(SNIPPETS / n) for n in ("Send.java", "SpringBinding.java", "Runner.java")]
            proc = subprocess.run([javac, "-encoding", "UTF-8", "-d", str(self.out), "-cp",
                                   os.pathsep.join(JAKARTA_JARS), *sources],
                                  capture_output=True, text=True, timeout=300)
            self._built = proc.returncode == 0
            assert self._built, proc.stderr
        assert self._built

    def run(self, mode: str, jobs: list[Job], jvm_flags: Sequence[str] = ()) -> list[str | None]:
        self.ensure()
        argv = [shutil.which("java") or "java", *jvm_flags, "-cp", self.classpath(), "Runner", mode]
        for job in jobs:
            argv += [str(job.mounted.dir), job.to, job.subject]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT * 2)
        lines = proc.stdout.splitlines()
        assert len(lines) == len(jobs), proc.stdout + proc.stderr
        return [None if line == "OK" else line for line in lines]


def _javamail_batch(build: JavaBuild) -> Callable[[list[Job]], list[str | None]]:
    def batch(jobs: list[Job]) -> list[str | None]:
        # The documented JVM flags; every account here shares the test CA, so one JVM serves all.
        trusted = next(j.mounted for j in jobs if (j.mounted.dir / "truststore.jks").exists())
        flags = [f"-Djavax.net.ssl.trustStore={trusted.dir / 'truststore.jks'}",
                 f"-Djavax.net.ssl.trustStorePassword={trusted.env['TRUSTSTORE_PASSWORD']}"]
        return build.run("javamail", jobs, flags)
    return batch


def _spring_batch(build: JavaBuild) -> Callable[[list[Job]], list[str | None]]:
    def batch(jobs: list[Job]) -> list[str | None]:
        return build.run("spring", jobs)  # no JVM flag: the SSL bundle carries the CA
    return batch


# --------------------------------------------------------------------------- the others


def _need_node() -> None:
    require_executable("node", "apt-get install nodejs")
    if not (node_modules() / "nodemailer" / "package.json").exists():
        missing("nodemailer", "run tests/system/extra-npm.sh")


def _need_python(module: str) -> Callable[[], None]:
    def need() -> None:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            missing(module, "pip install -e '.[test]'")
    return need


def _need_swaks() -> None:
    require_executable("swaks", "apt-get install swaks")
    perl = subprocess.run(["perl", "-MIO::Socket::SSL", "-e", "1"], capture_output=True)
    if perl.returncode != 0:
        missing("IO::Socket::SSL", "apt-get install libio-socket-ssl-perl libnet-ssleay-perl")


def _node(script: str, with_ca_env: bool) -> Callable[[Job], tuple[list[str], dict[str, str]]]:
    def command(job: Job) -> tuple[list[str], dict[str, str]]:
        extra = {"NODE_PATH": str(node_modules())}
        ca = _ca(job.mounted)
        if with_ca_env and ca:
            extra["NODE_EXTRA_CA_CERTS"] = ca
        return [shutil.which("node") or "node", str(SNIPPETS / script), job.to, job.subject], extra
    return command


def _symfony(job: Job) -> tuple[list[str], dict[str, str]]:
    ca = _ca(job.mounted)
    flags = ["-d", f"openssl.cafile={ca}"] if ca else []
    return [shutil.which("php") or "php", *flags, str(SNIPPETS / "send-symfony.php"), job.to,
            job.subject], {}


def _python(script: str, *args: str) -> Callable[[Job], tuple[list[str], dict[str, str]]]:
    def command(job: Job) -> tuple[list[str], dict[str, str]]:
        ca = _ca(job.mounted)
        extra = {"SSL_CERT_FILE": ca} if ca else {}
        return [sys.executable, str(SNIPPETS / script), *args, job.to, job.subject], extra
    return command


def _ruby(job: Job) -> tuple[list[str], dict[str, str]]:
    return [shutil.which("ruby") or "ruby", str(SNIPPETS / "send-mail.rb"), job.to,
            job.subject], {}


def _shell(script: str) -> Callable[[Job], tuple[list[str], dict[str, str]]]:
    def command(job: Job) -> tuple[list[str], dict[str, str]]:
        return ["sh", str(SNIPPETS / script), job.to, job.subject], {}
    return command


def clients(build: JavaBuild) -> dict[str, Client]:
    """The twelve clients of issue 15, by name."""
    def need_php() -> None:
        require_executable("php", "apt-get install php-cli")
        require_file(SYMFONY_AUTOLOAD, "apt-get install php-symfony-mailer")

    def need_ruby() -> None:
        require_executable("ruby", "apt-get install ruby")
        require_file(RUBY_MAIL, "apt-get install ruby-mail")

    all_ = [
        Client("javamail", build.ensure, batch=_javamail_batch(build), host="localhost"),
        Client("spring", build.ensure, batch=_spring_batch(build), host="localhost"),
        Client("nodemailer-json", _need_node, _node("send-nodemailer.js", False)),
        Client("nodemailer-url", _need_node, _node("send-nodemailer-url.js", True)),
        # Symfony honours require_tls from 7.3; Debian ships 5.4 (see symfony_can_refuse()).
        Client("symfony", need_php, _symfony, can_refuse=symfony_can_refuse()),
        Client("django", _need_python("django"), _python("send-django.py", "settings"),
               ascii_password_only=True),
        Client("dj-email-url", _need_python("dj_email_url"),
               _python("send-django.py", "dj-email-url"), ascii_password_only=True),
        Client("django-environ", _need_python("environ"),
               _python("send-django.py", "django-environ"), ascii_password_only=True),
        Client("smtplib", lambda: None, _python("send-smtplib.py"), ascii_password_only=True),
        Client("ruby-mail", need_ruby, _ruby),
        Client("msmtp", lambda: require_executable("msmtp", "apt-get install msmtp") and None,
               _shell("send-msmtp.sh")),
        Client("swaks", _need_swaks, _shell("send-swaks.sh")),
    ]
    return {c.name: c for c in all_}


def symfony_can_refuse() -> bool:
    """Whether the installed Symfony Mailer knows the require_tls DSN option (7.3+)."""
    factory = Path(SYMFONY_AUTOLOAD).parent / "Transport" / "Smtp" / "EsmtpTransportFactory.php"
    return factory.exists() and "require_tls" in factory.read_text(errors="replace")
