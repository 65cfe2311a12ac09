"""The benchmark suite's own parts, without running a benchmark: parsing wrk and h2load, the
config every proxy loads, and the docs section it rewrites (benchmarks/, ``nox -s bench``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
import yaml

from benchmarks import bench_suite, benchlib
from trioproxy import cli

WRK = """\
Running 1s test @ http://127.0.0.1:18931/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    40.05us  180.99us   3.33ms   96.96%
    Req/Sec   120.33k    16.64k  128.96k    90.91%
  Latency Distribution
     50%   12.00us
     75%   14.00us
     90%   19.00us
     99%    0.96ms
  131233 requests in 1.10s, 19.02MB read
  Non-2xx or 3xx responses: 7
Requests/sec: 119367.95
Transfer/sec:     17.30MB
"""

H2LOAD = """\
finished in 1.00s, 2000.00 req/s, 138.80KB/s
requests: 2001 total, 2002 started, 2001 done, 2000 succeeded, 1 failed, 1 errored, 0 timeout
status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx
                     min         max         mean         sd        +/- sd
time for request:       15us      3.22ms        50us       215us    99.20%
time for connect:       49us        70us        59us        15us   100.00%
"""


def test_wrk_output_gives_rate_percentiles_in_ms_and_errors() -> None:
    load = benchlib.parse_wrk(WRK)
    assert load.requests == 131233
    assert load.rps == 119367.95
    assert load.p50_ms == 0.012
    assert load.p99_ms == 0.96
    assert load.errors == "Non-2xx or 3xx responses: 7"


def test_h2load_output_gives_rate_mean_time_and_failures() -> None:
    load = benchlib.parse_h2load(H2LOAD)
    assert (load.requests, load.rps, load.p50_ms) == (2000, 2000.0, 0.05)
    assert load.errors == "1 failed, 1 errored"


def test_the_proxy_config_of_every_role_is_one_trioproxy_accepts(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ports = {role: 20000 + i for i, role in enumerate(benchlib.ROLES)}
    backend = benchlib.Backend(h1=30001, h2c=30002, h1_tls=30003, h2_tls=30004)
    text = benchlib.envoy_config(9901, ports, backend, cert, key, collector=30005)
    listeners = yaml.safe_load(text)["static_resources"]["listeners"]
    tls = {ln["name"] for ln in listeners if "transport_socket" in ln["filter_chains"][0]}
    assert [ln["name"] for ln in listeners] == list(benchlib.ROLES)
    assert tls == {"h1_tls", "h2tls_h2c"}
    config = tmp_path / "bench.yaml"
    config.write_text(text)
    assert cli.main(["validate", str(config)]) == 0


def test_the_suite_section_is_replaced_in_place_and_inserted_before_the_first_heading(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nIntro.\n\n## Older figures\n\nkept\n")
    first = f"{bench_suite.BEGIN}\n\n## Suite\n\nrun 1\n\n{bench_suite.END}\n"
    bench_suite.write_docs(first, docs)
    assert docs.read_text() == f"# Benchmarks\n\nIntro.\n\n{first}\n## Older figures\n\nkept\n"
    second = first.replace("run 1", "run 2")
    bench_suite.write_docs(second, docs)
    assert docs.read_text() == f"# Benchmarks\n\nIntro.\n\n{second}\n## Older figures\n\nkept\n"


def test_the_nox_form_of_the_reproduce_command_leaves_out_what_nox_adds() -> None:
    # nox -s bench makes its own pure-Python install and adds --floor: a run's local
    # interpreter path must not end up in the command the docs tell readers to run
    argv = ["--duration", "8", "--pure-python", "/work/venv/bin/python", "--floor", "--write-docs"]
    assert bench_suite.nox_args(argv) == "--duration 8 --write-docs"
    assert bench_suite.nox_args(["--pure-python=/x/python", "--quick"]) == "--quick"


def test_perf_samples_are_charged_to_the_nearest_compiled_or_interpreted_frame(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import profile_proxy

    lib = "/usr/lib/libpython3.11.so.1.0"
    compiled = "/venv/site-packages/abc__mypyc.cpython-311-x86_64-linux-gnu.so"
    script = "\n\n".join(
        [
            # a send in the kernel, under compiled code, under the interpreter
            f"python\n\t 1 tcp_sendmsg ([kernel.kallsyms])\n\t 2 send (/lib/libc.so.6)\n"
            f"\t 3 CPyDef_io_flush ({compiled})\n\t 4 _PyEval_EvalFrameDefault ({lib})",
            # the interpreter's own work, above any compiled frame
            f"python\n\t 5 _PyObject_Malloc ({lib})\n\t 6 _PyEval_EvalFrameDefault ({lib})\n"
            f"\t 7 CPyDef_io_flush ({compiled})",
            f"python\n\t 8 CPyDef_io_flush ({compiled})",
        ]
    )
    profile_proxy.owners(script, 5)
    out = capsys.readouterr().out
    assert "3 samples; kernel at the leaf: 33.3 %" in out
    assert " 66.7 %  CPyDef_io_flush" in out
    assert " 33.3 %  <interpreted" in out
