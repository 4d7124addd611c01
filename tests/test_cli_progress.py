"""The CLI's one progress display: plain lines when stderr is not a terminal, a tqdm bar when it is."""
from __future__ import annotations

import io

from pipeline.cli.progress import Progress, format_eta


def test_plain_lines_show_the_first_and_last_event_and_are_throttled_between():
    out = io.StringIO()
    with Progress("tokenize", unit="units", every_s=3600, stream=out) as p:
        for done in range(0, 11):
            p.update(done, 10, images=f"{done * 4}/40", eta="1m00s")
    lines = out.getvalue().splitlines()
    assert lines == ["tokenize: 0/10 units (0%), images 0/40, eta 1m00s",
                     "tokenize: 10/10 units (100%), images 40/40, eta 1m00s"]
    out = io.StringIO()
    with Progress("verify", unit="shards", every_s=0, stream=out) as p:
        for done in range(4):
            p.update(done, 3)
    assert out.getvalue().splitlines()[-1] == "verify: 3/3 shards (100%)" and len(out.getvalue().splitlines()) == 4


def test_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with Progress("sampling", unit="img", total=8, stream=out) as p:
        p.update(4, img_per_s=2.5)
        p.update(8)
    text = out.getvalue()
    assert "sampling" in text and "8/8" in text and "\r" in text  # tqdm redraws in place
    assert "sampling: 8/8 img (100%)" not in text  # no plain lines on a terminal


def test_format_eta():
    assert [format_eta(s) for s in (None, 5, 65, 3725)] == ["?", "5s", "1m05s", "1h02m"]


def test_verify_and_inspect_report_per_shard_progress(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.data.synthetic import write_synthetic_token_dataset
    from pipeline.data.verify import verify_dataset

    root = str(tmp_path / "tokens")
    write_synthetic_token_dataset(root, codebook_size=64, latent_size=4, num_classes=10, shard_sizes=[10, 12, 7],
                                  formats=("parquet",))
    seen = []
    assert verify_dataset(root, progress=lambda done, total: seen.append((done, total))).ok
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    r = CliRunner().invoke(cli, ["verify", root], catch_exceptions=False)
    assert r.exit_code == 0 and "verify: 3/3 shards (100%)" in r.output, r.output
    r = CliRunner().invoke(cli, ["inspect", root, "--report-dir", str(tmp_path / "rep")], catch_exceptions=False)
    assert r.exit_code == 0 and "inspect: 3/3 shards (100%)" in r.output, r.output
