"""Memory of a long-running light worker: its pool process's RSS over 2,000 items.

One `celery -A workers worker -Q light` (concurrency 1), a dedicated redis-server, a file://
store, tiny 32x32 images, every light stage (rapidocr, three captioners, VQA) and no
generator, chunk 32. A warm-up batch loads the models and fills the per-process caches;
then the soak batch runs and the pool process's RSS is sampled every 0.2 s. Growth is the
RSS at the end against the RSS right after warm-up.

    python benchmarks/soak.py [--quick]
"""
from __future__ import annotations

import threading
import time

try:
    from benchmarks import common as C
    from benchmarks.overhead import batch_span, itx
except ImportError:  # run as a script
    import common as C
    from overhead import batch_span, itx

CHUNK = 32
N = 2000
WARM = 320
TARGET_PCT = 5.0
OPTS = ["--profile", "tiny-random", "--ocr", "rapidocr", "--captioners", "blip,git,vit-gpt2",
        "--vqa", "what is this?", "--generator", "none", "--chunk", str(CHUNK)]


def main(quick: bool = False) -> dict:
    from tests.cluster import Worker, redis_server

    n, warm = (640, 160) if quick else (N, WARM)
    tmp = C.tmpdir("itx-bench-soak-")
    store = tmp / "store"
    C.write_images(tmp / "warm", warm, start=50_000, size=(32, 32))
    C.write_images(tmp / "soak", n, size=(32, 32))
    res: dict = {"n": n, "warm_up": warm, "chunk": CHUNK, "spec": OPTS}
    samples: list[tuple[float, float]] = []
    with redis_server() as redis:
        env = C.worker_base_env(ITX_BROKER_URL=redis.url + "/0",
                                ITX_RESULT_BACKEND=redis.url + "/1", ITX_STORE=store.as_uri())
        w = Worker("light", env, "soak-bench")
        try:
            w.wait_ready()
            itx(env, "submit", str(tmp / "warm"), "--batch", "warm", "--wait", *OPTS)
            kids = C.children(w.proc.pid)
            if len(kids) != 1:
                raise RuntimeError(f"expected one pool process, found {kids}")
            pid = kids[0]
            start = C.rss_mb(pid)
            stop = threading.Event()
            t0 = time.perf_counter()

            def sample():
                while not stop.is_set():
                    samples.append((time.perf_counter() - t0, C.rss_mb(pid)))
                    stop.wait(0.2)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            itx(env, "submit", str(tmp / "soak"), "--batch", "soak", "--wait", *OPTS)
            stop.set()
            th.join()
            end = C.rss_mb(pid)
            if C.children(w.proc.pid) != [pid]:
                raise RuntimeError("the pool process was replaced during the soak")
        finally:
            w.stop()
    secs, done, failed = batch_span(store, "soak")
    if done != n or failed:
        raise RuntimeError(f"soak batch wrote {done} records ({failed} failed) of {n}")
    peak = max(r for _, r in samples)
    res.update({
        "rss_start_mb": round(start, 1), "rss_end_mb": round(end, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_growth_pct": round((end - start) * 100 / start, 2),
        "rss_peak_growth_pct": round((peak - start) * 100 / start, 2),
        "seconds": round(secs, 1), "items_per_s": round(n / secs, 1),
        "samples": [(round(t, 1), round(r, 1)) for t, r in samples[::5]],
    })
    res["target"] = C.target(res["rss_growth_pct"], "<=", TARGET_PCT)
    C.table(f"soak: one light worker, {n:,} items after {warm} warm-up, chunk {CHUNK}, "
            f"every light stage", ["figure", "value", "target"],
            [["RSS after warm-up (MB)", res["rss_start_mb"], ""],
             ["RSS at the end (MB)", res["rss_end_mb"], ""],
             ["RSS peak (MB)", res["rss_peak_mb"], ""],
             ["growth, end vs start (%)", res["rss_growth_pct"],
              f"<= {TARGET_PCT:g} {C.verdict(res['target'])}"],
             ["growth, peak vs start (%)", res["rss_peak_growth_pct"], ""],
             ["items/s", res["items_per_s"], ""]])
    C.write("soak", res)
    return res


if __name__ == "__main__":
    C.cli(main)
