"""The Ray Data tokenize job: source images -> exactly-once token shards + manifest.

Plan (a pure function of the source listing and the config)::

    sorted listing ──split──▶ units of ``unit_size`` images (unit i ⇒ shard name i; the resume unit)
                   ──split──▶ each unit into tasks of ``task_size`` images (one Ray Data row each)
    Ray Data:  task rows ─▶ read+decode+crop (CPU tasks) ─▶ encode+search (actor pool, GPU or CPU)
    driver:    a unit's encoded tasks, joined in task order once all have arrived
               ─▶ shard file(s), written atomically ─▶ unit record (written last)
    end:       error report (JSONL key, reason) ─▶ manifest.json (written last of all)

Units are large (12,288 images: three Parquet row groups; ImageNet train in 105 shards per format)
and tasks small enough to keep a task's decoded crops near ``TASK_BYTES`` (``auto_task_size``).

Driver memory: the listing, the compact task rows built from it, and the tasks of the *open* units
(tokens, keys, labels: a few bytes per image, never crops). The pipeline keeps the row order
(``preserve_order``), so tasks arrive unit by unit and one unit is open at a time; at most
``write_threads`` finished units wait for or are in their writes (the reader's queue holds as many
task rows). A kill loses the finished tasks of the open unit only; a rerun redoes that unit.

Progress: as each unit is written the driver calls the ``progress`` callback and rewrites
``_tokenize/status.json`` (units and images done, images/s, ETA, state), so that another shell
can follow a long run (``cat OUT/_tokenize/status.json``).

Exactly once: a unit is done when its record ``_tokenize/units/unit-XXXXX.json`` exists, and the
record is written only after the unit's shards are durable. A rerun (or ``resume=True``) lists the
source again, checks it is the same listing and the same settings (``_tokenize/job.json``), and
only runs the units without a record. Tasks start at multiples of ``task_size`` from the unit's
start and each is encoded in fixed chunks of ``batch_size`` from its start, so a unit's tokens do
not depend on which run encoded it (``task_size`` is in ``job.json``).
Every listed image ends up in exactly one shard or in the error report with its reason.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from tokenizer.preprocess import AUGMENTATIONS, view_names
from pipeline.data.shards import (FORMATS, Manifest, ShardInfo, TokenizerInfo, join, put_bytes_atomic, url_to_fs,
                                  write_manifest)
from pipeline.data.tokenize_output import UnitAssembler, check_job, done_units, listing_fingerprint, write_unit
from pipeline.data.tokenize_progress import JOB_DIR, STATUS_FILE, ProgressTracker, TokenizeProgress
from pipeline.data.tokenize_stages import EncodeTasks, decode_task, encoder_payload, pack_items
from pipeline.ray_session import ray_session
from pipeline.data.sources import LABEL_MAPS, LAYOUTS, Listing, SourceItem, list_source
from maskgit_core.errors import ConfigError, PipelineError

__all__ = ["TokenizeConfig", "TokenizeResult", "TokenizeProgress", "ResourcePlan", "plan_resources", "plan_units",
           "plan_tasks", "auto_task_size", "run_tokenize", "JOB_DIR", "ERRORS_FILE", "STATUS_FILE", "UNIT_SIZE",
           "TASK_BYTES", "listing_fingerprint"]

log = logging.getLogger(__name__)

ERRORS_FILE = "errors.jsonl"
RAY_RETRIES = 3
"""Retries of a Ray task or actor that died (e.g. killed for memory) before the job fails."""
UNIT_SIZE = 3 * 4096
"""Default images per unit (= per shard): three Parquet row groups (docs/SHARDS.md, "Why 12,288 images")."""
TASK_BYTES = 64 * 2**20
"""Decoded crops per task when ``task_size`` is auto: a task row's size in the object store."""
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "bf16")
_END = object()  # the end of the Ray Data pipeline, in the driver's queue


@dataclass(kw_only=True, frozen=True)
class TokenizeConfig:
    """One tokenize run."""

    source: str
    """Source path or URL (see pipeline.data.sources for the layouts)."""
    out: str
    """Output directory or URL prefix for shards, error report and manifest."""
    tokenizer: str
    """Tokenizer checkpoint directory (model.safetensors + config.json): a local path or an s3://, gs:// URL."""
    layout: str = "auto"
    """Source layout; ``auto`` detects it."""
    split: str | None = None
    """For an ImageNet root holding train/ and val/: which one (default train)."""
    label_map: str = "sorted"
    """``sorted`` (position of the class id in sorted order) or ``imagenet1k`` (ImageNet-1k index)."""
    val_labels: str | None = None
    """Ground-truth file for a flat val folder (LOC_val_solution.csv format)."""
    formats: tuple[str, ...] = ("parquet",)
    """Shard formats to write: ``parquet``, ``webdataset`` or both."""
    augmentations: tuple[str, ...] = ()
    """Stored augmentations besides the centre crop: ``hflip``, ``tencrop``."""
    unit_size: int = UNIT_SIZE
    """Images per unit = per shard (``--shard-size``), the resume unit. Part of the plan: a rerun must
    use the same value."""
    task_size: int | None = None
    """Images per Ray task (``--task-size``; at most ``unit_size``); None: ``auto_task_size``. Part of
    the plan like ``unit_size``."""
    batch_size: int | None = None
    """Images per encoder forward pass; None: 32 on CPU encoders, 64 on GPU encoders (tasks are sized
    in multiples of 32 either way: 320 images at 256 px = 5 GPU chunks, none padded)."""
    search: str = "auto"
    """Nearest-code backend: ``auto``, ``faiss`` or ``torch``."""
    device: str = "auto"
    """Encoder device: ``auto`` (GPU actors where the cluster has GPUs or GPU node types its
    autoscaler can start), ``cpu`` or ``cuda`` (GPU actors; asks the autoscaler for GPU nodes and
    waits for them when none is up)."""
    precision: str = "fp32"
    """Encoder precision: ``fp32`` (TF32 off on CUDA), ``tf32`` or ``bf16`` (autocast); the search always
    runs in float32 (``EncodeTasks``). Recorded in the job record and the manifest."""
    compile: bool = False
    """``torch.compile`` the encoder in each actor (fixed shapes; falls back to eager with a warning)."""
    num_encoders: int | None = None
    """Encoder actors; default: one per GPU the cluster has or its autoscaler can start (at most one
    per task), or on CPU clusters one per 2 CPUs (2 threads each; one per CPU below 4 CPUs)."""
    gpu_timeout_s: float = 900.0
    """Seconds to wait for the first GPU node when GPU encoders are planned and none is up
    (``--gpu-timeout``); then the job fails saying what to check."""
    simulated_gpus: bool = False
    """Test only (``--simulated-gpus``): encoder actors reserve Ray GPU resources as planned
    but run torch on the CPU. For Ray's fake autoscaling cluster, whose GPU nodes declare GPUs that do
    not exist. Without it, a GPU actor whose torch sees no CUDA device fails the job."""
    ray_address: str | None = None
    """Connect to this Ray cluster; default: the current one, or a local one started for the run."""
    resume: bool = False
    """Require an existing run in ``out`` to continue (a plain rerun also skips finished units)."""
    write_threads: int = 4
    """Driver threads writing shards."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "augmentations", tuple(self.augmentations))
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise ConfigError(f"formats {list(self.formats)}: choose one or both of {list(FORMATS)}")
        bad = [a for a in self.augmentations if a not in AUGMENTATIONS]
        if bad:
            raise ConfigError(f"unknown augmentation(s) {bad}; choose from {list(AUGMENTATIONS)}")
        for name, value, valid in (("layout", self.layout, LAYOUTS), ("label_map", self.label_map, LABEL_MAPS),
                                   ("search", self.search, ("auto", "faiss", "torch")),
                                   ("device", self.device, DEVICES), ("precision", self.precision, PRECISIONS)):
            if value not in valid:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {list(valid)}")
        if self.unit_size < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError(f"unit_size ({self.unit_size}) and batch_size ({self.batch_size}) must be >= 1")
        if self.task_size is not None and self.task_size < 1:
            raise ConfigError(f"task_size must be >= 1 (or None for auto), got {self.task_size}")
        if self.num_encoders is not None and self.num_encoders < 1:
            raise ConfigError(f"num_encoders must be >= 1, got {self.num_encoders}")
        if not self.gpu_timeout_s > 0:
            raise ConfigError(f"gpu_timeout_s must be > 0, got {self.gpu_timeout_s}")


@dataclass
class TokenizeResult:
    """What a run did."""

    out: str
    manifest: Manifest
    units_total: int
    units_run: int
    units_skipped: int
    seconds: float
    steady_images_per_s: float | None = None
    """Images/s from the first encoded task to the last (start-up excluded); None for < 3 tasks."""
    encoder_images_per_s: float | None = None
    """Images/s inside the encoder actors (encode + search only), measured during this run."""
    decode_images_per_s: float | None = None
    """Listed images/s inside one decode task (read + decode + crop), measured during this run."""


# ------------------------------------------------------------------ planning (pure)

@dataclass(frozen=True)
class ResourcePlan:
    """How the job uses the cluster: encoder actors and decode tasks."""

    device: str
    num_encoders: int
    encoder_cpus: float
    encoder_gpus: float
    decode_cpus: float
    torch_threads: int
    wait_for_gpus: bool = False
    """No GPU encoder fits the nodes that are up: ask the autoscaler for GPU nodes and wait."""

    @property
    def encoder_bundle(self) -> dict[str, float]:
        """What one encoder actor reserves (what the autoscaler is asked for, per encoder)."""
        gpu = {"GPU": self.encoder_gpus} if self.encoder_gpus else {}
        return {**gpu, "CPU": self.encoder_cpus}


def plan_resources(cluster: dict[str, float], *, device: str = "auto", num_encoders: int | None = None,
                   gpu_capacity: int | None = None, tasks: int | None = None) -> ResourcePlan:
    """Size the pools from ``ray.cluster_resources()`` (the nodes that are up) and ``gpu_capacity``,
    the GPUs the cluster's autoscaler can reach (``pipeline.ray_autoscale.gpu_capacity``; None when
    unknown, 0 when it has no GPU node types). Reservations are fractional so that the actors never
    take the whole CPU budget (two 1-CPU actors plus a decode task deadlock on 2 CPUs).

    GPU encoders are planned for ``cuda``, and for ``auto`` where GPUs are up or can be started; then
    one per GPU the cluster can reach (at most one per task, ``tasks``) unless ``num_encoders`` says,
    and ``wait_for_gpus`` when none fits the nodes up now. ``cuda`` fails at once only when the
    cluster has no GPU and cannot have one (``gpu_capacity == 0``); with an unknown capacity it asks
    for ``num_encoders`` (default 1) and waits."""
    cpus = float(cluster.get("CPU", 1.0))
    gpus = float(cluster.get("GPU", 0.0))
    reachable = max(gpus, float(gpu_capacity or 0))
    if device == "auto":
        device = "cuda" if reachable >= 1 else "cpu"
    if device == "cuda":
        if reachable < 1 and gpu_capacity is not None:
            raise ConfigError("device='cuda' but the Ray cluster has no GPUs and cannot start any (no GPU node "
                              "types); use --device cpu or add GPU workers")
        n = num_encoders or max(1, int(reachable))
        if num_encoders is None and tasks is not None:
            n = max(1, min(n, tasks))  # an encoder per task at most: more would only idle
        per_gpu = min(1.0, reachable / n) if reachable >= 1 else 1.0
        enc_cpus = min(1.0, max(0.1, (cpus - 1) / (2 * n)))
        return ResourcePlan("cuda", n, enc_cpus, per_gpu, 1.0 if cpus >= 4 else 0.5, 2,
                            wait_for_gpus=gpus + 1e-9 < per_gpu)
    # a CPU encoder scales badly over intra-op threads (tiny convolutions): 2 one-thread actors on 2 CPUs
    # tokenize 1.33x the images/s of 1 two-thread actor (60k images, 32 px demo tokenizer, 2026-12-06)
    n = num_encoders or (max(1, int(cpus)) if cpus < 4 else int(cpus) // 2)
    threads = max(1, int(cpus // n))
    enc_cpus = max(0.1, min(float(threads), 0.5 * cpus / n))
    decode_cpus = 0.5 if cpus <= 4 else 1.0
    return ResourcePlan("cpu", n, enc_cpus, 0.0, decode_cpus, threads)


def plan_units(items: list[SourceItem], unit_size: int) -> list[list[SourceItem]]:
    """Deterministic work units: consecutive runs of the sorted listing."""
    return [items[i:i + unit_size] for i in range(0, len(items), unit_size)]


def plan_tasks(n_images: int, task_size: int) -> list[tuple[int, int]]:
    """A unit of ``n_images`` as tasks: [start, stop) ranges starting at multiples of ``task_size``."""
    return [(a, min(a + task_size, n_images)) for a in range(0, n_images, task_size)] or [(0, 0)]


def auto_task_size(*, unit_size: int, batch_size: int, image_size: int, n_views: int,
                   budget: int = TASK_BYTES) -> int:
    """Images per task when none is given: as many as keep the decoded crops (``n_views x 3 x S x S``
    bytes each) within ``budget``, rounded down to a multiple of ``batch_size``, at least
    ``batch_size`` and at most ``unit_size``. With 64 MiB and batch 32: 32 px -> the whole unit,
    256 px -> 320, 256 px with 10 views -> 32."""
    per_image = n_views * 3 * image_size * image_size
    fit = budget // per_image // batch_size * batch_size
    return min(unit_size, max(batch_size, fit))


def load_tokenizer(uri: str):
    """The tokenizer checkpoint at ``uri``: a local directory, or an object-store URL (``s3://``,
    ``gs://``) of the directory (or of a parent holding ``tokenizer/``), whose ``config.json`` and
    weights are copied into a temporary directory first and then loaded (sha256 checked) like a local
    one. So a job submitted with ``ray job submit --working-dir .`` reads the ~1 GB checkpoint from the
    bucket and never uploads it (Ray caps the working directory at 512 MiB)."""
    import tempfile

    import tokenizer
    from maskgit_core.checkpoint_io import CONFIG, WEIGHTS

    if "://" not in str(uri) or str(uri).startswith("file://"):
        return tokenizer.load(str(uri).removeprefix("file://"))
    fs, root = url_to_fs(str(uri))
    for cand in (root, f"{root}/tokenizer"):
        if fs.isfile(f"{cand}/{CONFIG}"):
            break
    else:
        raise ConfigError(f"{uri}: no tokenizer checkpoint here (no {CONFIG} in it or in tokenizer/ under it)")
    with tempfile.TemporaryDirectory(prefix="maskgit-tok-") as tmp:
        for name in (CONFIG, WEIGHTS):
            if not fs.isfile(f"{cand}/{name}"):
                raise ConfigError(f"{uri}: {name} is missing next to {CONFIG}")
            fs.get_file(f"{cand}/{name}", f"{tmp}/{name}")
        log.info("tokenizer %s copied from %s", uri, cand)
        return tokenizer.load(tmp)


def _tokenizer_info(model, augmentations: tuple[str, ...]) -> TokenizerInfo:
    sha = getattr(model, "weights_sha256", None)
    if not sha:
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        sha = h.hexdigest()
    c = model.config
    return TokenizerInfo(checkpoint_sha256=sha, codebook_size=c.codebook_size, latent_h=c.latent_size,
                         latent_w=c.latent_size, image_size=c.image_size, augmentations=view_names(augmentations))


def _job_spec(cfg: TokenizeConfig, info: TokenizerInfo, listing: Listing, task_size: int) -> dict[str, Any]:
    return {"tokenizer": info.to_dict(), "source": {"uri": cfg.source, "layout": listing.layout,
                                                    "split": listing.split},
            "label_map": cfg.label_map, "unit_size": cfg.unit_size, "task_size": task_size,
            "formats": sorted(cfg.formats),
            "precision": cfg.precision,
            "listing_sha256": listing_fingerprint(listing), "images": len(listing.items)}


@dataclass
class _Plan:
    """What a run has to do: the listing, its units, and the units done by earlier runs."""

    info: TokenizerInfo
    listing: Listing
    units: list[list[SourceItem]]
    task_size: int
    fs: Any
    root: str
    records: dict[int, dict]
    pending: list[int]


def _plan_run(cfg: TokenizeConfig, model) -> _Plan:
    """List the source, split it into units, check ``job.json`` and find the finished units."""
    info = _tokenizer_info(model, cfg.augmentations)
    listing = list_source(cfg.source, layout=cfg.layout, split=cfg.split, label_map=cfg.label_map,
                          val_labels=cfg.val_labels)
    units = plan_units(listing.items, cfg.unit_size)
    task_size = min(cfg.task_size or auto_task_size(unit_size=cfg.unit_size, batch_size=cfg.batch_size or 32,
                                                    image_size=info.image_size, n_views=info.n_aug), cfg.unit_size)
    log.info("%s: %d images (+%d listing errors) in %d units of %d, tasks of %d", cfg.source, len(listing.items),
             len(listing.errors), len(units), cfg.unit_size, task_size)
    fs, root = url_to_fs(cfg.out)
    check_job(fs, root, _job_spec(cfg, info, listing, task_size), resume=cfg.resume, out=cfg.out)
    records = done_units(fs, root, len(units))
    pending = [u for u in range(len(units)) if u not in records]
    log.info("%d units done already, %d to run", len(records), len(pending))
    return _Plan(info, listing, units, task_size, fs, root, records, pending)


def _task_rows(plan: _Plan) -> list[dict[str, Any]]:
    """One compact row per task of the pending units, unit by unit (``pack_items``)."""
    rows = []
    for u in plan.pending:
        spans = plan_tasks(len(plan.units[u]), plan.task_size)
        rows += [{"unit": u, "task": t, "tasks": len(spans), **pack_items(plan.units[u][a:b])}
                 for t, (a, b) in enumerate(spans)]
    return rows


def _joins_cluster(cfg: TokenizeConfig) -> bool:
    """Whether the run uses a running Ray cluster (one that may autoscale) rather than starting a
    local Ray for itself (``ray_session``); asked before the session starts."""
    import ray

    if ray.is_initialized():
        return True
    address = cfg.ray_address if cfg.ray_address is not None else os.environ.get("RAY_ADDRESS")
    return bool(address) and address != "local"


def _resource_plan(cfg: TokenizeConfig, *, tasks: int, joined: bool) -> ResourcePlan:
    """``plan_resources`` for the connected cluster: its nodes up and, on a cluster the run joined
    (not a local Ray it started, which has no autoscaler), the GPUs its autoscaler can reach."""
    import ray

    from pipeline.ray_autoscale import gpu_capacity

    cluster = ray.cluster_resources()
    if cfg.device == "cpu":
        capacity, where = None, "not asked (--device cpu)"
    elif joined:
        capacity, where = gpu_capacity()
    else:
        capacity, where = int(cluster.get("GPU", 0)), "a local Ray started for this run"
    res = plan_resources(cluster, device=cfg.device, num_encoders=cfg.num_encoders, gpu_capacity=capacity,
                         tasks=tasks)
    log.info("resources: %s (cluster %s; GPUs its autoscaler can reach: %s, from %s)", res,
             {k: cluster[k] for k in ("CPU", "GPU") if k in cluster}, capacity, where)
    if cfg.device == "auto" and res.device == "cpu" and capacity is None:
        log.info("no GPU in the cluster and no autoscaler node types visible (%s): CPU encoders; --device cuda "
                 "asks the autoscaler for GPU nodes", where)
    return res


def _task_dataset(cfg: TokenizeConfig, plan: _Plan, model, res: ResourcePlan, rows: list[dict[str, Any]]):
    """The Ray Data pipeline over the pending units' tasks: decode tasks, then the encoder actor pool,
    which grows up to ``res.num_encoders`` actors as their GPUs (or CPUs) join the cluster."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver reports per unit instead (progress callback)
    ctx.execution_options.preserve_order = True  # tasks arrive unit by unit: one unit open in the driver
    info = plan.info
    payload_ref = ray.put(encoder_payload(model))
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    # bounded retries (Ray Data retries a failed task or actor without limit by default): a task whose
    # worker dies RAY_RETRIES + 1 times fails the job with the reason, and a rerun continues after it
    ds = ds.map_batches(decode_task, batch_size=1, batch_format="numpy", num_cpus=res.decode_cpus,
                        fn_kwargs={"image_size": info.image_size, "augmentations": cfg.augmentations},
                        max_retries=RAY_RETRIES)
    return ds.map_batches(
        EncodeTasks, batch_size=1, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=res.num_encoders),
        num_cpus=res.encoder_cpus, num_gpus=res.encoder_gpus or None,
        max_restarts=RAY_RETRIES, max_task_retries=RAY_RETRIES,
        fn_constructor_args=([payload_ref],),
        fn_constructor_kwargs=dict(device=res.device, simulated_gpus=cfg.simulated_gpus, precision=cfg.precision,
                                   batch_size=cfg.batch_size or (64 if res.device == "cuda" else 32),
                                   compile=cfg.compile, search=cfg.search, torch_threads=res.torch_threads,
                                   image_size=info.image_size, n_views=info.n_aug,
                                   latent=info.latent_h, token_dtype=info.token_dtype.name))


class _PipelineReader:
    """Reads the Ray Data pipeline in a thread into a bounded queue (rows, then ``_END`` or the
    pipeline's exception), so that the driver can stop at the first failed write at once instead of
    when the next unit comes out of the encoders. Setting ``stop`` ends the thread, which closes the
    iterator and so stops the pipeline."""

    def __init__(self, ds, *, maxsize: int):
        self.arrived: queue.Queue = queue.Queue(maxsize=maxsize)
        self.stop = threading.Event()
        self._ds = ds
        threading.Thread(target=self._read, name="tokenize-pipeline", daemon=True).start()

    def _offer(self, item) -> bool:
        """Queue ``item`` for the driver thread; False once the driver has stopped."""
        while not self.stop.is_set():
            try:
                self.arrived.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            for row in self._ds.iter_rows():
                if not self._offer(row):
                    return  # leaving the loop closes the iterator, which stops the Ray Data pipeline
            self._offer(_END)
        except BaseException as e:  # a Ray error: raised in the driver thread
            self._offer(e)


def _write_units(cfg: TokenizeConfig, plan: _Plan, ds, tracker: ProgressTracker
                 ) -> tuple[list[tuple[float, int]], list[tuple[int, float, float]]]:
    """Join each unit's encoded tasks as they arrive (``UnitAssembler``) and write each whole unit
    (writer threads); record it and report progress as each write finishes. The first failed write
    stops the job: no further task is taken from the pipeline or unit started, queued writes are
    dropped, and its ``StorageError`` is raised once the writes already running have ended (each
    leaves its files whole or absent). Returns (arrival time, listed images) and (images, encoder
    seconds, decode seconds) per task."""
    arrivals: list[tuple[float, int]] = []  # (time a task came out of the encoder, its images)
    encode_s: list[tuple[int, float, float]] = []  # (images, encoder s, decode s) per task
    assembler = UnitAssembler()
    failed: list[BaseException] = []  # set by the writer thread that failed first

    def on_done(f) -> None:
        if not f.cancelled() and f.exception() is not None:
            failed.append(f.exception())

    def finish(futures: set, *, block: bool) -> set:
        done, rest = wait(futures, timeout=None if block else 0, return_when=ALL_COMPLETED if block else
                          FIRST_COMPLETED)
        for f in sorted((f for f in done if not f.cancelled() and f.exception() is None),
                        key=lambda f: f.result()["unit"]):
            rec = f.result()
            plan.records[rec["unit"]] = rec
            log.info("unit %d: %d samples, %d errors", rec["unit"], rec["samples"], len(rec["errors"]))
            tracker.unit_written(rec)
        return rest

    broken: BaseException | None = None  # the pipeline's own error, raised after the writes have ended
    reader = _PipelineReader(ds, maxsize=cfg.write_threads)
    with ThreadPoolExecutor(max_workers=cfg.write_threads) as pool:
        futures: set = set()
        try:
            while not failed:
                try:
                    row = reader.arrived.get(timeout=0.2)
                except queue.Empty:
                    futures = finish(futures, block=False)
                    continue
                if row is _END:
                    break
                if isinstance(row, BaseException):
                    broken = row
                    break
                arrivals.append((time.time(), int(row["n"]) + len(json.loads(row["errors"]))))
                encode_s.append((int(row["n"]), float(row["encode_s"]), float(row["decode_s"])))
                unit = assembler.add(row)
                if unit is None:
                    continue
                f = pool.submit(write_unit, cfg.out, plan.fs, plan.root, unit, plan.info, cfg.formats)
                f.add_done_callback(on_done)
                futures.add(f)
                futures = finish(futures, block=False)
        finally:
            reader.stop.set()
            if failed:
                for f in futures:
                    f.cancel()
            finish(futures, block=True)
    if failed:
        log.error("stopped at the first failed write: %s", failed[0])
        raise failed[0]
    if broken is not None:
        raise _pipeline_error(broken, cfg, plan) from broken
    return arrivals, encode_s


def _pipeline_error(e: BaseException, cfg: TokenizeConfig, plan: _Plan) -> BaseException:
    """A Ray failure (a lost node, a worker dead more than RAY_RETRIES times) as one line that says
    what was kept; anything else unchanged."""
    from ray.exceptions import RayError

    if not isinstance(e, RayError):
        return e
    ours = re.findall(r"maskgit_core\.errors\.\w+: (.+)", str(e))
    if ours:  # the project's own error in a Ray worker (e.g. a GPU actor whose torch sees no CUDA): its words
        return PipelineError(f"the Ray pipeline of {cfg.out} stopped: {ours[-1].strip()[:500]}; the "
                             f"{len(plan.records)} of {len(plan.units)} units written so far are kept: fix that, then "
                             "rerun the same command to finish the rest")
    reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    return PipelineError(f"the Ray pipeline of {cfg.out} stopped ({type(e).__name__}: {reason}); the "
                         f"{len(plan.records)} of {len(plan.units)} units written so far are kept: rerun the "
                         "same command to finish the rest")


def _write_manifest(cfg: TokenizeConfig, plan: _Plan) -> Manifest:
    """The error report, then manifest.json (written last of all)."""
    listing, records, fs, root = plan.listing, plan.records, plan.fs, plan.root
    errors = sorted([tuple(e) for r in records.values() for e in r["errors"]] + list(listing.errors))
    err_data = "".join(json.dumps({"key": k, "reason": r}) + "\n" for k, r in errors).encode()
    put_bytes_atomic(fs, join(root, ERRORS_FILE), err_data)
    shards = [ShardInfo(**s) for u in sorted(records) for s in records[u]["shards"]]
    samples = sum(r["samples"] for r in records.values())
    manifest = Manifest(
        tokenizer=plan.info, shards=shards, classes=listing.classes,
        source={"uri": cfg.source, "layout": listing.layout, "split": listing.split,
                "image_count": len(listing.items) + len(listing.errors)},
        counts={"images": len(listing.items) + len(listing.errors), "samples": samples, "errors": len(errors)},
        error_report=ERRORS_FILE,
        extra={"unit_size": cfg.unit_size, "task_size": plan.task_size, "label_map": cfg.label_map, "num_classes": len(listing.classes),
               "listing_sha256": listing_fingerprint(listing), "precision": cfg.precision, "search": cfg.search})
    write_manifest(cfg.out, manifest)
    return manifest


def _throughput(arrivals: list[tuple[float, int]], encode_s: list[tuple[int, float, float]]
                ) -> tuple[float | None, float | None, float | None]:
    """(steady images/s from the first encoded task to the last, images/s inside the encoders,
    listed images/s inside a decode task)."""
    steady = None
    if len(arrivals) >= 3:  # throughput between the first and the last task, without start-up
        steady = sum(n for _, n in arrivals[1:]) / max(arrivals[-1][0] - arrivals[0][0], 1e-9)
    enc_t, dec_t = sum(e for _, e, _ in encode_s), sum(d for _, _, d in encode_s)
    enc = sum(n for n, _, _ in encode_s) / enc_t if enc_t else None
    return steady, enc, (sum(n for _, n in arrivals) / dec_t if dec_t else None)


def _gpu_request(res: ResourcePlan, cfg: TokenizeConfig, notice: Callable[[str], None]):
    """While the run needs more GPU encoders than the cluster holds: ask the autoscaler for them
    (``GpuRequest``) and, when none fits yet, wait for the first (state ``waiting`` in status.json)."""
    import ray

    from pipeline.ray_autoscale import GpuRequest

    if res.device != "cuda":
        return contextlib.nullcontext()
    request = GpuRequest(res.encoder_bundle, res.num_encoders, timeout_s=cfg.gpu_timeout_s, notice=notice,
                         advice="then rerun the same command (no unit was started), with a longer --gpu-timeout, or "
                                "with --device cpu")
    if request.placed(ray.cluster_resources()) >= res.num_encoders:
        return contextlib.nullcontext()
    return request


def run_tokenize(cfg: TokenizeConfig, *, progress: Callable[[TokenizeProgress], None] | None = None,
                 notice: Callable[[str], None] | None = None) -> TokenizeResult:
    """Run (or finish) a tokenize job; returns the manifest written last. See the module docstring.

    ``progress`` gets a ``TokenizeProgress`` when the pipeline starts and as each unit is written;
    the same is written to ``_tokenize/status.json`` (state ``done`` just before the manifest).
    ``notice`` gets the lines a user waiting at the terminal should see (waiting for GPU nodes);
    default: logged as warnings."""
    notice = notice or log.warning
    t0 = time.time()
    model = load_tokenizer(cfg.tokenizer)
    plan = _plan_run(cfg, model)
    tracker = ProgressTracker(plan.fs, plan.root, units=plan.units, records=plan.records, callback=progress)
    arrivals: list[tuple[float, int]] = []
    encode_s: list[tuple[int, float, float]] = []
    if plan.pending:
        joined = _joins_cluster(cfg)
        with ray_session(cfg.ray_address):
            rows = _task_rows(plan)
            res = _resource_plan(cfg, tasks=len(rows), joined=joined)
            with _gpu_request(res, cfg, notice) as request:
                if res.wait_for_gpus:
                    tracker.report("waiting")
                    request.wait()
                ds = _task_dataset(cfg, plan, model, res, rows)
                tracker.start()
                arrivals, encode_s = _write_units(cfg, plan, ds, tracker)
    if len(plan.records) != len(plan.units):
        missing = sorted(set(range(len(plan.units))) - set(plan.records))[:10]
        raise RuntimeError(f"units {missing} produced no output; rerun to finish them")
    tracker.report("done")
    manifest = _write_manifest(cfg, plan)
    dt = time.time() - t0
    log.info("wrote %s: %d samples, %d errors in %.1f s", cfg.out, manifest.counts["samples"],
             manifest.counts["errors"], dt)
    steady, enc, dec = _throughput(arrivals, encode_s)
    n_units, n_run = len(plan.units), len(plan.pending)
    return TokenizeResult(cfg.out, manifest, n_units, n_run, n_units - n_run, dt, steady, enc, dec)
