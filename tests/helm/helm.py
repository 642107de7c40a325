"""Drives the real Helm engine (Helm v4's Go SDK, through helm-python-sdk's libhelm_c) for tests
and the demo: lint, render, install and uninstall charts/gpupool.

Usage:
  python tests/helm/helm.py lint CHART
  python tests/helm/helm.py render CHART RELEASE NAMESPACE [--set key=value ...]
  python tests/helm/helm.py install CHART RELEASE NAMESPACE --kubeconfig PATH [--set key=value ...]
  python tests/helm/helm.py uninstall RELEASE NAMESPACE --kubeconfig PATH
Prints JSON on stdout; exits non-zero with the Helm error on stderr.
"""

import argparse
import json
import sys

import helm_python as helm


def merged_sets(pairs):
    values = {}
    for pair in pairs or []:
        for key, value in helm.parse_set_string(pair).items():
            values = deep_merge(values, {key: value})
    return values


def deep_merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["lint", "render", "install", "uninstall"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--set", action="append")
    opts = parser.parse_args()
    try:
        if opts.command == "lint":
            (chart,) = opts.args
            print(json.dumps(helm.lint(chart), default=str))
        elif opts.command == "render":
            chart_path, release, namespace = opts.args
            with helm.Chart.load(chart_path) as chart:
                manifests = chart.render(merged_sets(opts.set), name=release, namespace=namespace)
            print(json.dumps(manifests))
        elif opts.command == "install":
            chart_path, release, namespace = opts.args
            with helm.Config(kubeconfig_path=opts.kubeconfig, namespace=namespace) as cfg:
                rel = cfg.install(chart_path, release, merged_sets(opts.set))
            print(json.dumps(rel, default=str))
        elif opts.command == "uninstall":
            release, namespace = opts.args
            with helm.Config(kubeconfig_path=opts.kubeconfig, namespace=namespace) as cfg:
                print(json.dumps(cfg.uninstall(release), default=str))
    except Exception as e:  # the Helm error, reported as such
        print(f"helm {opts.command} failed: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
