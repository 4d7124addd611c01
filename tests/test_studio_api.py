"""The studio's JSON API over HTTP, without a browser: every endpoint, its equality with the CLI
(same seed, same pixels), and the 4xx answers to what a user can get wrong."""
from __future__ import annotations

import base64
import http.client
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import tokenizer
import transformer
from transformer.editing import pixel_mask_to_token_mask

CLASS_NAMES = ["astronaut", "coffee", "chelsea", "rocket", "hubble", "ihc", "colorwheel", "retina", "logo", "moto"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("studio")
    torch.manual_seed(0)
    tokens = d / "tokens"
    tokens.mkdir()
    (tokens / "manifest.json").write_text(json.dumps(
        {"classes": [{"index": i, "id": f"c{i:02d}_{n}", "name": n} for i, n in enumerate(CLASS_NAMES)]}))
    tokenizer.save(tokenizer.build("debug"), d / "tok")
    transformer.save(transformer.build("debug", latent_size=8), d / "mvtm", extra={"data": str(tokens)})
    transformer.save(transformer.build("debug", latent_size=8, causal=True), d / "ar")
    return d


@pytest.fixture(scope="module")
def studio(ckpts):
    from pipeline.studio import Studio, StudioPaths

    return Studio(StudioPaths(model=ckpts / "mvtm", tokenizer=ckpts / "tok", ar_model=ckpts / "ar"))


@pytest.fixture(scope="module")
def base(studio):
    from pipeline.studio import serve_in_thread

    server, _ = serve_in_thread(studio)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _get(url):
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _post(url, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _png_url(a: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB"))


def _file_pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _cli(args):
    from click.testing import CliRunner

    from pipeline.cli import cli

    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def _image(seed=0, size=32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------ static page and info

def test_page_and_static_files(base):
    st, ctype, body = _get(base + "/")
    assert st == 200 and ctype.startswith("text/html") and b"<canvas id=\"edit-canvas\"" in body
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        st, ctype, body = _get(f"{base}/static/{name}")
        assert st == 200 and ctype.startswith(kind) and body
    for bad in ("/static/../api.py", "/static/nope.js", "/static/server.py", "/etc/passwd"):
        assert _get(base + bad)[0] == 404


def test_info_has_class_names_options_and_samples(base, studio):
    st, ctype, body = _get(base + "/api/info")
    info = json.loads(body)
    assert st == 200 and ctype == "application/json"
    assert info["num_classes"] == 10 and info["image_size"] == 32 and info["patch"] == 4
    assert [c["name"] for c in info["classes"]] == CLASS_NAMES  # from the training data's manifest
    assert info["ar_model"] and "cosine" in info["schedules"] and set(info["orders"]) == {"confidence", "halton"}
    assert info["samples"] and all({"id", "name"} <= set(s) for s in info["samples"])


def test_class_names_from_a_relative_data_path_as_the_demo_records_it(tmp_path, monkeypatch):
    from pipeline.studio.models import class_table

    demo = tmp_path / "demo-out"
    (demo / "tokens" / "train").mkdir(parents=True)
    (demo / "tokens" / "train" / "manifest.json").write_text(json.dumps({"classes": [{"index": 1, "name": "coffee"}]}))
    transformer.save(transformer.build("debug", latent_size=8), demo / "runs" / "mvtm" / "export",
                     extra={"data": "demo-out/tokens/train"})
    monkeypatch.chdir(tmp_path / "demo-out" / "runs")  # not where the demo ran
    names = [c["name"] for c in class_table(demo / "runs" / "mvtm" / "export", 3)]
    assert names == ["class 0", "coffee", "class 2"]


def test_class_names_fall_back_to_numbers(tmp_path):
    from pipeline.studio.models import class_table

    transformer.save(transformer.build("debug", latent_size=8), tmp_path / "m", extra={"data": str(tmp_path / "no")})
    assert [c["name"] for c in class_table(tmp_path / "m", 3)] == ["class 0", "class 1", "class 2"]


def test_sample_images_are_fitted_squares(base):
    info = json.loads(_get(base + "/api/info")[2])
    st, _, body = _get(f"{base}/api/samples/{info['samples'][0]['id']}")
    out = json.loads(body)
    assert st == 200 and _pixels(out["image"]).shape == (32, 32, 3) and "32x32" in out["rule"]
    st, _, body = _get(base + "/api/samples/nope")
    assert st == 400 and "unknown sample 'nope'" in json.loads(body)["error"]


def test_fit_applies_the_cli_resize_rule(base):
    from pipeline.generate import fit_image

    img = _image(1, 48)[:, :40]  # 40 wide, 48 high
    st, out = _post(base + "/api/fit", {"image": _png_url(img)})
    assert st == 200 and "40x48" in out["rule"]
    ref, _ = fit_image(Image.fromarray(img), 32)
    assert np.array_equal(_pixels(out["image"]), np.asarray(ref))
    st, out = _post(base + "/api/fit", {"image": "data:image/png;base64," + base64.b64encode(b"GIF89a?").decode()})
    assert st == 400 and "image:" in out["error"]


# ------------------------------------------------------------------ generate = the CLI

def test_generate_equals_cli_sample_bit_for_bit(base, ckpts, tmp_path):
    st, out = _post(base + "/api/generate", {"classes": [1, 2], "n": 3, "seed": 7, "steps": 6, "schedule": "linear",
                                             "choice_temperature": 3.0, "order": "confidence", "strip_index": 4})
    assert st == 200, out
    assert out["labels"] == [1, 1, 1, 2, 2, 2]  # classes repeated per class, as the CLI
    grid = tmp_path / "grid.png"
    _cli(["sample", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--classes", "1,2", "--per-class", 3,
          "--seed", 7, "--decode-steps", 6, "--schedule", "linear", "--choice-temperature", 3.0, "--save-steps",
          "--out", grid])
    assert np.array_equal(_pixels(out["grid"]), _file_pixels(grid))
    for i, (url, c) in enumerate(zip(out["images"], out["labels"])):
        assert np.array_equal(_pixels(url), _file_pixels(tmp_path / "grid" / f"{i:05d}_class{c}.png"))
    assert np.array_equal(_pixels(out["strip"]), _file_pixels(tmp_path / "grid" / "steps" / "00004_class2.png"))
    assert "--classes 1,2 --per-class 3 --seed 7 --decode-steps 6 --schedule linear" in out["cli"]


def test_generate_over_one_batch_uses_the_cli_seeds(base, ckpts, tmp_path):
    # 3 x 12 = 36 images: two batches of the CLI's 32, the second seeded seed + 32
    st, out = _post(base + "/api/generate", {"classes": [0, 5, 9], "n": 12, "seed": 2, "steps": 4,
                                             "strip_index": 35})
    assert st == 200 and len(out["images"]) == 36, out
    _cli(["sample", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--classes", "0,5,9", "--per-class", 12,
          "--seed", 2, "--decode-steps", 4, "--save-steps", "--out", tmp_path / "g.png"])
    assert np.array_equal(_pixels(out["grid"]), _file_pixels(tmp_path / "g.png"))
    assert np.array_equal(_pixels(out["strip"]), _file_pixels(tmp_path / "g" / "steps" / "00035_class9.png"))


def test_generate_halton_and_ar_side_by_side_equal_the_cli(base, ckpts, tmp_path):
    st, out = _post(base + "/api/generate", {"classes": [3], "n": 2, "seed": 1, "order": "halton",
                                             "compare_ar": True})
    assert st == 200, out
    _cli(["sample", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--classes", "3", "--per-class", 2,
          "--seed", 1, "--order", "halton", "--out", tmp_path / "h.png"])
    _cli(["sample", "--checkpoint", ckpts / "ar", "--tokenizer", ckpts / "tok", "--classes", "3", "--per-class", 2,
          "--seed", 1, "--ar", "--out", tmp_path / "ar.png"])
    assert np.array_equal(_pixels(out["grid"]), _file_pixels(tmp_path / "h.png"))
    assert np.array_equal(_pixels(out["ar"]["grid"]), _file_pixels(tmp_path / "ar.png"))
    assert out["seconds"] > 0 and out["ar"]["seconds"] > 0


def test_generate_strip_shows_every_step(base):
    st, out = _post(base + "/api/generate", {"classes": [0], "n": 1, "steps": 5})
    strip = _pixels(out["strip"])
    assert strip.shape == (2 * (32 + 2) + 2, 5 * (32 + 2) + 2, 3)  # 2 rows (kept, predicted) x T columns


@pytest.mark.parametrize("body,status,match", [
    ({"classes": [10]}, 400, r"class must be an integer in \[0, 9\], got 10"),
    ({"classes": [-1]}, 400, r"class must be an integer in \[0, 9\]"),
    ({"classes": ["cat"]}, 400, r"class must be an integer"),
    ({"classes": []}, 400, "non-empty list"),
    ({}, 400, "non-empty list"),
    ({"classes": [1], "n": 0}, 400, r"n must be an integer in \[1, 64\]"),
    ({"classes": [1, 2, 3], "n": 30}, 400, "at most 64"),
    ({"classes": [1], "steps": 0}, 400, "steps must be an integer"),
    ({"classes": [1], "steps": 2.5}, 400, "steps must be an integer"),
    ({"classes": [1], "seed": -1}, 400, "seed must be an integer"),
    ({"classes": [1], "seed": 1e400}, 400, "seed must be an integer"),
    ({"classes": [1], "guidance_scale": float("nan")}, 400, "guidance_scale must be a number"),
    ({"classes": [1], "schedule": "nope"}, 400, r"unknown schedule 'nope'; choose one of \['cosine'"),
    ({"classes": [1], "order": "random"}, 400, "unknown order 'random'; choose one of"),
    ({"classes": [1], "guidance_schedule": "x"}, 400, "unknown guidance_schedule"),
    ({"classes": [1], "choice_temperature": "hot"}, 400, "choice_temperature must be a number"),
    ({"classes": [1], "guidance_scale": 2.0}, 400, "null class"),  # no class dropout -> no CFG, says why
    ({"classes": [1], "strip_index": 5, "n": 2}, 400, "strip_index must be an integer"),
])
def test_generate_rejects_bad_input_with_a_message(base, body, status, match):
    import re

    st, out = _post(base + "/api/generate", body)
    assert st == status and re.search(match, out["error"]), out


def test_generate_without_ar_model_refuses_compare(ckpts):
    from pipeline.studio import RequestError, Studio, StudioPaths

    s = Studio(StudioPaths(model=ckpts / "mvtm", tokenizer=ckpts / "tok"))
    assert s.info()["ar_model"] is None
    with pytest.raises(RequestError, match="no AR baseline loaded: start the studio with --ar-model"):
        s.generate({"classes": [1], "n": 1, "compare_ar": True})


# ------------------------------------------------------------------ edit = the CLI

def _mask(rows: slice, cols: slice, size=32) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[rows, cols] = 255
    return m


def test_edit_inpaint_equals_cli_and_keeps_unmasked_pixels(base, ckpts, tmp_path):
    img, mask = _image(2), _mask(slice(9, 15), slice(6, 20))
    st, out = _post(base + "/api/edit", {"op": "inpaint", "image": _png_url(img), "mask": _png_url(mask),
                                         "class": 4, "seed": 11, "steps": 10})
    assert st == 200, out
    Image.fromarray(img).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    _cli(["edit", "inpaint", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--image",
          tmp_path / "in.png", "--mask", tmp_path / "mask.png", "--class", 4, "--seed", 11, "--decode-steps", 10,
          "--out", tmp_path / "cli.png"])
    got = _pixels(out["image"])
    assert np.array_equal(got, _file_pixels(tmp_path / "cli.png"))
    # outside the regenerated tokens plus the one-patch feather band, the input pixels are kept exactly
    tok = pixel_mask_to_token_mask(mask > 127, patch=4, dilation=1)
    keep = ~np.kron(tok, np.ones((4, 4), bool))
    assert keep.any() and np.array_equal(got[keep], img[keep])
    assert out["tokens_regenerated"] == int(pixel_mask_to_token_mask(mask > 127, patch=4).sum())
    assert np.array_equal(_pixels(out["input"]), img)


def test_edit_replace_uses_the_mask_bbox_like_the_cli(base, ckpts, tmp_path):
    img, mask = _image(3), _mask(slice(8, 20), slice(4, 16))  # bbox top 8, left 4, 12 x 12
    st, out = _post(base + "/api/edit", {"op": "replace", "image": _png_url(img), "mask": _png_url(mask),
                                         "class": 6, "seed": 2})
    assert st == 200 and out["bbox"] == "8_4_12_12", out
    Image.fromarray(img).save(tmp_path / "in.png")
    _cli(["edit", "replace", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--image",
          tmp_path / "in.png", "--bbox", "8_4_12_12", "--class", 6, "--seed", 2, "--out", tmp_path / "cli.png"])
    assert np.array_equal(_pixels(out["image"]), _file_pixels(tmp_path / "cli.png"))
    st, out2 = _post(base + "/api/edit", {"op": "replace", "image": _png_url(img), "bbox": "8_4_12_12",
                                          "class": 6, "seed": 2})
    assert st == 200 and out2["image"] == out["image"]  # an explicit box = the mask's box


def test_edit_outpaint_equals_cli_and_grows_the_canvas(base, ckpts, tmp_path):
    img = _image(4)
    st, out = _post(base + "/api/edit", {"op": "outpaint", "image": _png_url(img), "class": 1, "seed": 3,
                                         "extend": {"left": 8, "right": 0, "top": 5, "bottom": 0}})
    assert st == 200, out
    got = _pixels(out["image"])
    assert got.shape == (32 + 8, 32 + 8, 3)  # top 5 px rounded up to two 4-px patches
    Image.fromarray(img).save(tmp_path / "in.png")
    _cli(["edit", "outpaint", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--image",
          tmp_path / "in.png", "--extend", "left=8,top=5", "--class", 1, "--seed", 3, "--out", tmp_path / "cli.png"])
    assert np.array_equal(got, _file_pixels(tmp_path / "cli.png"))
    assert np.array_equal(got[8 + 4:, 8 + 4:], img[4:, 4:])  # beyond the feather band: the input as is


def _tiff_url() -> str:
    buf = io.BytesIO()
    Image.fromarray(_image(5)).save(buf, format="TIFF")
    return "data:image/tiff;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("patch,status,match", [
    ({"op": "blur"}, 400, r"unknown op 'blur'; choose one of \['inpaint', 'outpaint', 'replace'\]"),
    ({"image": None}, 400, "image is missing"),
    ({"image": "data:image/png;base64,%%%"}, 400, "not valid base64"),
    ({"image": "data:image/png;base64," + base64.b64encode(b"hello").decode()}, 400, "not an image file"),
    ({"image": "tiff"}, 400, "format TIFF is not supported"),
    ({"image": "huge"}, 400, r"4097x1 px; sides must be 1\.\.4096"),
    ({"mask": "small"}, 400, "mask is 16x16 but image is 32x32"),
    ({"mask": "empty"}, 400, "the mask is empty"),
    ({"mask": None}, 400, "mask is missing"),
    ({"class": 10}, 400, r"class must be an integer in \[0, 9\]"),
    ({"class": None}, 400, "class is missing"),
    ({"steps": 0}, 400, "steps must be an integer"),
    ({"op": "outpaint", "extend": "sideways=3"}, 400, "must be SIDE=PIXELS"),
    ({"op": "outpaint", "extend": {"left": 0}}, 400, "extend is missing"),
    ({"op": "outpaint", "extend": {"left": 1000}}, 400, "at most 128 px per side"),
    ({"op": "replace", "bbox": "30_30_8_8"}, 400, "not inside the 32x32 image"),
    ({"op": "replace", "bbox": "1x2"}, 400, "top_left_height_width"),
])
def test_edit_rejects_bad_input_with_a_message(base, patch, status, match):
    import re

    body = {"op": "inpaint", "image": _png_url(_image(6)), "mask": _png_url(_mask(slice(0, 4), slice(0, 4))),
            "class": 1}
    special = {"tiff": _tiff_url(), "huge": _png_url(np.zeros((1, 4097, 3), np.uint8)),
               "small": _png_url(_mask(slice(0, 4), slice(0, 4), size=16)), "empty": _png_url(_mask(slice(0, 0), slice(0, 0)))}
    body.update({k: special.get(v, v) if isinstance(v, str) else v for k, v in patch.items()})
    st, out = _post(base + "/api/edit", body)
    assert st == status and re.search(match, out["error"]), out


# ------------------------------------------------------------------ HTTP plumbing

def test_http_errors_are_json_4xx(base):
    assert _post(base + "/api/nope", {})[0] == 404
    st, _, body = _get(base + "/api/nope")
    assert st == 404 and "no API endpoint /api/nope" in json.loads(body)["error"]
    st, _, body = _get(base + "/api/generate")
    assert st == 405 and "takes POST" in json.loads(body)["error"]
    assert _post(base + "/api/info", {})[0] == 405
    st, out = _post(base + "/api/generate", None, raw=b"{not json")
    assert st == 400 and "not JSON" in out["error"]
    st, out = _post(base + "/api/generate", None, raw=b"[1, 2]")
    assert st == 400 and "JSON object" in out["error"]
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.putrequest("POST", "/api/edit")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "over the" in json.loads(r.read())["error"]
    conn.close()


def test_a_bug_answers_500_without_a_traceback(base, studio, monkeypatch, caplog):
    def boom():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(studio, "info", boom)
    st, _, body = _get(base + "/api/info")
    msg = json.loads(body)["error"]
    assert st == 500 and "internal error" in msg and "secret" not in msg and "Traceback" not in msg
    assert "secret internals" in caplog.text  # but the log has it


# ------------------------------------------------------------------ finding the models, the CLI verb

def _demo_layout(root, ckpts):
    import shutil

    shutil.copytree(ckpts / "tok", root / "tokenizer")
    shutil.copytree(ckpts / "mvtm", root / "runs" / "mvtm" / "export")
    shutil.copytree(ckpts / "ar", root / "runs" / "ar" / "export")


def test_resolve_paths_finds_the_demo_models(tmp_path, ckpts):
    from pipeline.studio import resolve_paths

    _demo_layout(tmp_path / "demo-out", ckpts)
    p = resolve_paths(model=None, tokenizer=None, ar_model=None, demo_out=tmp_path / "demo-out")
    assert p.model == tmp_path / "demo-out" / "runs" / "mvtm" / "export"
    assert p.tokenizer == tmp_path / "demo-out" / "tokenizer"
    assert p.ar_model == tmp_path / "demo-out" / "runs" / "ar" / "export"


def test_resolve_paths_without_models_says_what_to_do(tmp_path):
    from maskgit_core.errors import ConfigError
    from pipeline.studio import resolve_paths

    with pytest.raises(ConfigError, match=r"run `make demo` first, or pass --model"):
        resolve_paths(model=None, tokenizer=None, ar_model=None, demo_out=tmp_path / "demo-out")


def test_cli_studio_without_models_is_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import cli

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["studio"])
    assert r.exit_code == 2 and "run `make demo` first, or pass --model" in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("host,warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_cli_studio_binds_loopback_and_warns_otherwise(tmp_path, ckpts, monkeypatch, host, warned):
    from click.testing import CliRunner

    import pipeline.studio
    from pipeline.cli import cli

    bound = {}

    class FakeServer:
        server_port = 7860

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            bound["closed"] = True

    def fake_make_server(studio, *, host, port):
        bound.update(host=host, port=port)
        return FakeServer()

    monkeypatch.setattr(pipeline.studio, "make_server", fake_make_server)
    _demo_layout(tmp_path / "demo-out", ckpts)
    monkeypatch.chdir(tmp_path)
    args = ["studio"] + (["--host", host] if host != "127.0.0.1" else [])
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert bound == {"host": host, "port": 7860, "closed": True}
    assert ("warning: binding 0.0.0.0" in r.output) == warned
    assert "demo-out/runs/mvtm/export" in r.output and "http://" in r.output


def test_explicit_model_needs_its_tokenizer_not_the_demos(tmp_path, ckpts):
    import shutil

    from maskgit_core.errors import ConfigError
    from pipeline.studio import resolve_paths

    _demo_layout(tmp_path / "demo-out", ckpts)
    shutil.copytree(ckpts / "mvtm", tmp_path / "elsewhere" / "mvtm")
    with pytest.raises(ConfigError, match="no tokenizer found next to .*: pass --tokenizer DIR"):
        resolve_paths(model=tmp_path / "elsewhere" / "mvtm", tokenizer=None, ar_model=None,
                      demo_out=tmp_path / "demo-out")
    shutil.copytree(ckpts / "tok", tmp_path / "elsewhere" / "tokenizer")  # the official layout: parent/tokenizer
    p = resolve_paths(model=tmp_path / "elsewhere" / "mvtm", tokenizer=None, ar_model=None,
                      demo_out=tmp_path / "demo-out")
    assert p.tokenizer == tmp_path / "elsewhere" and p.ar_model is None


def test_held_out_samples_are_one_per_class_of_the_demo_data(tmp_path):
    from pipeline.studio.models import held_out_samples

    for c in ("c00_a", "c01_b"):
        d = tmp_path / "data" / "val" / c
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_image(i)).save(d / f"{c}_val_{i}.JPEG", format="JPEG")
    s = held_out_samples(tmp_path / "data")
    assert [x["name"] for x in s] == ["c00_a (held out)", "c01_b (held out)"]
    assert s[0]["path"].endswith("c00_a_val_0.JPEG")
    assert all("photo" in x for x in held_out_samples(None))  # no data: the built-in photos
