"""paella-serve under hostile input: real servers on 127.0.0.1 over the tiny checkpoints, fed the
requests of a hostile-but-realistic probe. Each loop is bounded and every server stops itself."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import io
import json
import os
import signal
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.test_serve import Server, concurrently, png_base64

API_KEY = "k" * 24
LIMITS = ["--max-batch", "4", "--max-wait-ms", "200", "--max-steps", "16", "--max-body-mb", "1",
          "--max-image-pixels", str(512 * 512), "--max-prompt-bytes", "1000"]


def call(server, method, path, body=None, headers=None, key=API_KEY, timeout=120):
  """(status, JSON answer, headers) of one request with full control of its headers."""
  host, port = server.url.removeprefix("http://").split(":")
  connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
  data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
  sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}),
          **(headers or {})}
  try:
    connection.request(method, path, body=data, headers=sent)
    response = connection.getresponse()
    raw = response.read()
    return response.status, json.loads(raw) if raw else None, dict(response.getheaders())
  finally:
    connection.close()


def post(server, mode, body, **kw):
  status, answer, _ = call(server, "POST", f"/v1/{mode}", body, **kw)
  return status, answer


def rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def huge_png(side: int) -> bytes:
  """A valid side x side greyscale PNG of zeros: a few hundred KB that decode to side**2 bytes."""
  chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                              + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  compressor, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
  for _ in range(side):
    parts.append(compressor.compress(row))
  parts.append(compressor.flush())
  header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
          + chunk(b"IEND", b""))


def stored(folder) -> list[str]:
  return sorted(name for name in os.listdir(folder) if name != "server.log")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  return tmp_path_factory.mktemp("hostile_inputs")


@pytest.fixture(scope="module")
def server(tiny_checkpoints, inputs):
  os.environ["PAELLA_SERVE_API_KEY"] = API_KEY
  try:
    running = Server(tiny_checkpoints / "model", inputs, *LIMITS)
  finally:
    del os.environ["PAELLA_SERVE_API_KEY"]
  running.get = lambda path: call(running, "GET", path)[:2]
  yield running
  running.stop()


def image_base64(side=32, seed=0) -> str:
  return png_base64((np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8))


def test_one_bad_request_never_reaches_the_shared_call(server):
  """The probe's poisoned batch: a 2**64 seed sent with 7 good requests. The bad one is refused
  alone, naming its field; every good one gets its image."""
  bodies = [{"prompt": "a", "seed": 2 ** 64}] + [{"prompt": "a", "seed": s} for s in range(7)]
  answers = concurrently(lambda body: post(server, "generate", body), bodies)
  assert answers[0][0] == 400 and answers[0][1]["field"] == "seed", answers[0]
  assert [status for status, _ in answers[1:]] == [200] * 7, answers
  assert all(len(answer["images"]) == 1 for _, answer in answers[1:])


def test_a_failing_shared_call_fails_only_the_request_at_fault(tiny_checkpoints):
  """Two edit requests that share a sampler call, one carrying codes outside the codebook: the
  call fails, each request is sampled again on its own, and only the bad one gets the error."""
  from paella_jax import request
  from paella_jax.pipeline import Pipeline
  from paella_jax.serve.batcher import Batcher
  from paella_jax.serve.metrics import Metrics
  pipe = Pipeline.from_checkpoint(str(tiny_checkpoints / "model"), batch_size=1)
  image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
  good, bad = (pipe.prepare(request.Edit(image=image, prompts=("a",), seed=s)) for s in (1, 2))
  bad.inputs["init_tokens"] = np.full_like(bad.inputs["init_tokens"], pipe.model.num_labels)
  batcher = Batcher(pipe, Metrics(), max_batch=4, max_wait_ms=50)

  async def both():
    runner = asyncio.create_task(batcher.run())
    try:
      return await asyncio.gather(batcher.submit(good), batcher.submit(bad),
                                  return_exceptions=True)
    finally:
      runner.cancel()

  (codes, _), failure = asyncio.run(both())
  batcher.close()
  assert isinstance(failure, ValueError) and "init_tokens codes must lie in" in str(failure)
  np.testing.assert_array_equal(codes, pipe.run(request.Edit(image=image, prompts=("a",),
                                                               seed=1)).codes)


def test_every_bound_is_refused_at_once_naming_the_field(server):
  """Values that would make the server work for minutes or allocate without bound are refused
  before any work, each with its field and a 4xx."""
  cases = [
      ("generate", {"prompt": "a", "steps": 1_000_000}, 400, "steps"),
      ("interpolate", {"prompts": ["a", "b"], "frames": 10 ** 9}, 413, "frames"),
      ("generate", {"prompt": "a", "num_images": 10 ** 9}, 413, "num_images"),
      ("generate", {"prompt": "a" * 5000}, 413, "prompt"),
      ("generate", {"prompt": "a", "negative_prompt": 3}, 400, "negative_prompt"),
      ("outpaint", {"prompt": "a", "image": image_base64(), "canvas": [10 ** 6, 10 ** 6]}, 413,
       "canvas"),
      ("generate", {"prompt": "a", "typical_min_tokens": 10 ** 6}, 400, "typical_min_tokens"),
      ("generate", {"prompt": "a", "seed": 1.5}, 400, "seed"),
      ("generate", {"prompt": "a", "cfg": "lots"}, 400, "cfg"),
      ("interpolate", {"prompts": ["a"]}, 400, "prompts"),
  ]
  for mode, body, status, field in cases:
    answer = post(server, mode, body)
    assert answer[0] == status and answer[1]["field"] == field, (body, answer)
  status, answer = post(server, "generate", json.dumps({"prompt": "a" * (2 << 20)}).encode())
  assert status == 413 and "--max-body-mb" in answer["error"]


def test_an_image_bomb_is_refused_from_its_header(server, inputs):
  """A 12000x12000 PNG of a few hundred KB is refused before its pixels are decoded: the
  server's memory does not grow by its 144 MB of pixels, and nothing is written."""
  png = huge_png(12000)
  assert len(png) < 1 << 20
  before, files = rss_mb(server.process.pid), stored(inputs)
  for mode, extra in [("vary", {}), ("edit", {"prompt": "a"})]:
    start = time.monotonic()
    status, answer = post(server, mode, {"image": base64.b64encode(png).decode(), **extra})
    assert status == 413 and answer["field"] == "image" and "12000x12000" in answer["error"]
    seconds = time.monotonic() - start
    assert seconds < 5  # refused from the header, not after decoding
  grown = rss_mb(server.process.pid) - before
  print(f"\n12000x12000 PNG of {len(png) / 1024:.0f} KB refused in {seconds * 1e3:.0f} ms, "
        f"server RSS {grown:+.0f} MB")
  assert grown < 100
  assert stored(inputs) == files


def test_refused_uploads_leave_nothing_on_disk(server, inputs):
  files = stored(inputs)
  bad = [("edit", {"prompt": "a", "image": base64.b64encode(b"not an image").decode()}),
         ("edit", {"prompt": "a", "image": image_base64(side=30)}),  # not a multiple of 8
         ("edit", {"prompt": "a", "image": image_base64(), "steps": 0}),
         ("inpaint", {"prompt": "a", "image": image_base64(), "mask": image_base64(side=16)}),
         ("edit", {"prompt": "a", "image": "%%%"})]
  for mode, body in bad:
    status, answer = post(server, mode, body)
    assert 400 <= status < 500, (body, answer)
  assert stored(inputs) == files


def test_concurrent_identical_uploads_all_succeed(server, inputs):
  body = {"prompt": "a", "image": image_base64(seed=7)}
  answers = concurrently(lambda seed: post(server, "edit", dict(body, seed=seed)), list(range(8)))
  assert [status for status, _ in answers] == [200] * 8, answers
  names = {answer["sidecars"][0]["request"]["image"] for _, answer in answers}
  assert len(names) == 1 and not os.path.isabs(names.pop())
  assert not [name for name in os.listdir(inputs) if name.endswith(".part")]


def test_other_sites_and_hosts_cannot_drive_it(server):
  """A page elsewhere (foreign Origin), a DNS-rebinding page (foreign Host), a form-style
  text/plain POST and a missing or wrong API key are refused; the page's own origin works."""
  body = {"prompt": "a"}
  origin = server.url
  assert post(server, "generate", body, headers={"Origin": "http://evil.example"})[0] == 403
  assert post(server, "generate", body, headers={"Host": "evil.example:80"})[0] == 403
  assert post(server, "generate", body, headers={"Content-Type": "text/plain"})[0] == 415
  assert post(server, "generate", body, key=None)[0] == 401
  assert post(server, "generate", body, key="x" * 24)[0] == 401
  assert call(server, "GET", "/metrics", key=None)[0] == 401
  assert call(server, "GET", "/health", key=None)[0] == 200
  assert post(server, "generate", body, headers={"Origin": origin})[0] == 200
  status, _, headers = call(server, "GET", "/docs")
  assert status == 404 and call(server, "GET", "/openapi.json")[0] == 404


def test_every_error_is_json_with_its_field_and_counted(server):
  before = call(server, "GET", "/metrics")[1]["statuses"]
  answers = [post(server, "generate", {"prompt": "a", "steps": "many"}),
             post(server, "nothing", {"prompt": "a"}),
             call(server, "GET", "/v1/generate")[:2],
             post(server, "generate", b"{not json")]
  assert [status for status, _ in answers] == [400, 404, 405, 400]
  for status, answer in answers:
    assert set(answer) == {"error", "field"} and "\n" not in answer["error"]
  assert answers[0][1]["field"] == "steps"
  after = call(server, "GET", "/metrics")[1]["statuses"]
  assert after.get("400", 0) - before.get("400", 0) == 2
  assert after.get("404", 0) - before.get("404", 0) == 1
  assert after.get("405", 0) - before.get("405", 0) == 1


def test_sidecars_name_no_absolute_path(server):
  status, answer = post(server, "edit", {"prompt": "a", "image": image_base64(seed=3)})
  assert status == 200

  def strings(value):
    if isinstance(value, dict):
      return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
      return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []
  assert not [s for s in strings(answer["sidecars"]) if os.path.isabs(s)]


def test_a_full_queue_answers_busy(tiny_checkpoints):
  from paella_jax import request
  from paella_jax.pipeline import Pipeline
  from paella_jax.serve.batcher import Batcher, Busy
  from paella_jax.serve.metrics import Metrics
  pipe = Pipeline.from_checkpoint(str(tiny_checkpoints / "model"), batch_size=1)
  batcher = Batcher(pipe, Metrics(), max_batch=1, max_queue=1)
  prepared = pipe.prepare(request.Generate(prompts=("a",)))

  async def two():
    first = asyncio.ensure_future(batcher.submit(prepared))  # nobody runs the batcher
    await asyncio.sleep(0)
    with pytest.raises(Busy, match="--max-queue"):
      await batcher.submit(prepared)
    first.cancel()

  asyncio.run(two())
  batcher.close()


def test_past_max_programs_the_compiled_programs_are_dropped(tiny_checkpoints):
  """With room for one program, a second step count drops the first from memory; both still
  sample what the pipeline samples."""
  from paella_jax import request
  from paella_jax.pipeline import Pipeline
  from paella_jax.serve.batcher import Batcher, Job
  from paella_jax.serve.metrics import Metrics
  pipe = Pipeline.from_checkpoint(str(tiny_checkpoints / "model"), batch_size=1)
  metrics = Metrics()
  batcher = Batcher(pipe, metrics, max_batch=1, max_programs=1)
  for steps in (2, 3, 2):
    req = request.Generate(prompts=("a",), settings={"steps": steps})
    (codes, _), = batcher.sample_jobs([Job(pipe.prepare(req), None)])
    np.testing.assert_array_equal(codes, pipe.run(req).codes)
    assert len(batcher._compiled) == 1
  assert metrics.compiles == 3
  batcher.close()


def test_input_store_keeps_its_quota_and_age(tmp_path):
  from paella_jax.serve.inputs import InputStore
  store = InputStore(str(tmp_path), quota_bytes=2500, max_age_s=3600, cleanup_every_s=0)
  paths = []
  for i in range(4):
    paths.append(store.put(bytes([i]) * 1000))
    os.utime(paths[-1], (time.time() - 100 + i, time.time() - 100 + i))
  store.cleanup()
  assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths[2:])
  os.utime(paths[3], (time.time() - 7200, time.time() - 7200))
  (tmp_path / ".upload-stale.part").write_bytes(b"x")
  os.utime(tmp_path / ".upload-stale.part", (time.time() - 120, time.time() - 120))
  store.cleanup()
  assert os.listdir(tmp_path) == [os.path.basename(paths[2])]


def test_exif_orientation_is_applied_wherever_images_are_read(tmp_path):
  """A JPEG stored landscape with Orientation=6 (a phone held upright) is read upright by the
  file reader (sample, eval), the bytes decoder (prepare, the loader) and the server."""
  from paella_jax.data.decode import decode_image
  from paella_jax.images import load_image
  from paella_jax.serve.requests import decode_image as serve_decode
  stored_pixels = np.zeros((32, 64, 3), np.uint8)
  stored_pixels[:, :32] = 255  # the left half white, as stored
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to display
  out = io.BytesIO()
  Image.fromarray(stored_pixels).save(out, format="JPEG", quality=95, exif=exif.tobytes())
  (tmp_path / "phone.jpg").write_bytes(out.getvalue())
  for upright in (np.round(load_image(str(tmp_path / "phone.jpg")) * 255),
                  decode_image(out.getvalue()),
                  serve_decode("image", base64.b64encode(out.getvalue()).decode(), 10 ** 6)):
    assert upright.shape == (64, 32, 3)
    assert upright[:28].mean() > 200 and upright[36:].mean() < 50  # white on top once turned


@pytest.mark.slow  # its own server start-up and a sampler call of a minute
def test_timeout_health_and_sigterm_are_bounded(tiny_checkpoints, tmp_path):
  """A request past its timeout answers 503 at once while its call goes on; /health says busy;
  SIGTERM then exits within its grace period although that call is still running."""
  running = Server(tiny_checkpoints / "model", tmp_path, "--max-batch", "1", "--max-steps",
                   "100000", "--timeout-s", "2", "--grace-s", "2")
  try:
    start = time.monotonic()
    status, answer = running.post("/v1/generate", {"prompt": "a", "steps": 50000})
    assert status == 503 and answer["field"] is None and "--timeout-s" in answer["error"]
    assert time.monotonic() - start < 30
    # the call may have started after the request (encoding first): once it has run past
    # --timeout-s, /health says busy
    deadline = time.monotonic() + 20
    while call(running, "GET", "/health", key=None)[0] != 503:
      assert time.monotonic() < deadline, "/health never said busy during the stuck call"
      time.sleep(0.2)
    running.process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    running.process.wait(timeout=30)
    assert time.monotonic() - start < 15
  finally:
    running.stop()


@pytest.mark.slow  # 64 clients for 20 s
def test_64_clients_mixing_good_and_bad_requests_lose_nothing(server):
  """A bounded load: 64 clients, every third request bad; every good request is answered with
  its image, every bad one refused; the server's memory stays flat."""
  bad_bodies = [{"prompt": "a", "seed": 2 ** 64}, {"prompt": "a", "steps": 10 ** 6},
                {"image": "%%%"}, {"prompt": 5}]
  deadline = time.monotonic() + 20
  post(server, "generate", {"prompt": "warm"})
  baseline = rss_mb(server.process.pid)

  def client(index):
    counts = {"good": 0, "bad": 0}
    i = 0
    while time.monotonic() < deadline:
      i += 1
      if i % 3 == 0:
        status, answer = post(server, "generate", bad_bodies[(index + i) % len(bad_bodies)])
        assert 400 <= status < 500 and answer["error"], answer
        counts["bad"] += 1
      else:
        status, answer = post(server, "generate", {"prompt": "load", "seed": index * 1000 + i})
        assert status == 200 and len(answer["images"]) == 1, answer
        counts["good"] += 1
    return counts

  with concurrent.futures.ThreadPoolExecutor(64) as pool:
    counts = list(pool.map(client, range(64)))
  good, bad = sum(c["good"] for c in counts), sum(c["bad"] for c in counts)
  grown = rss_mb(server.process.pid) - baseline
  print(f"\n64 clients, 20 s: {good} good requests answered 200, {bad} bad ones refused; "
        f"server RSS {baseline:.0f} MB -> {baseline + grown:.0f} MB")
  assert good > 64 and bad > 0 and grown < 200
