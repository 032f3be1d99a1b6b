"""tileseg.outputs.store against a real S3 API server (moto) on loopback: objects, uploads, the lease lock."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import S3Server, s3_with_buckets

from tileseg.errors import DestinationBusyError, OutputError
from tileseg.outputs.store import (
    StoreLock,
    StoreURL,
    check_writable,
    delete_prefix,
    exists,
    put_bytes,
    read_bytes,
    upload_file,
)

BUCKET = "tileseg-store-test"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_with_buckets(BUCKET) as server:
        yield server


def loc(key: str) -> StoreURL:
    return StoreURL.parse(f"s3://{BUCKET}/{key}")


def test_urls_split_into_bucket_and_key() -> None:
    where = StoreURL.parse("s3://bucket/a/b/mask.zarr/")
    assert (where.root, where.key) == ("s3://bucket", "a/b/mask.zarr")
    assert where.child("zarr.json").url == "s3://bucket/a/b/mask.zarr/zarr.json"
    with pytest.raises(OutputError, match="no bucket"):
        StoreURL.parse("s3:///key")


def test_objects_round_trip_and_create_only_refuses_a_second_writer(s3: S3Server) -> None:
    target = loc("objects/a.json")
    put_bytes(target, b"one", create_only=True)
    with pytest.raises(FileExistsError):
        put_bytes(target, b"two", create_only=True)
    assert read_bytes(target) == b"one"
    put_bytes(target, b"three")
    assert read_bytes(target) == b"three" and exists(target)
    assert not exists(loc("objects/none.json"))


def test_upload_then_delete_a_prefix(s3: S3Server, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: a multipart upload
    for name in ("x/1.bin", "x/2.bin", "x/sub/3.bin"):
        upload_file(local, loc(f"prefix/{name}"))
    assert read_bytes(loc("prefix/x/sub/3.bin")) == local.read_bytes()
    assert delete_prefix(loc("prefix/x")) == 3
    assert not exists(loc("prefix/x/1.bin"))


def test_a_prefix_is_deleted_with_its_run_record_last(s3: S3Server,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import obstore

    for name in ("mosaic.zarr/zarr.json", "run.json", "work/done/r0_c0", "zz.bin"):
        put_bytes(loc(f"staged/out.tif.partial/{name}"), b"{}")
    calls: list[list[str]] = []
    real = obstore.delete

    def delete(store: object, paths: object) -> None:
        calls.append([paths] if isinstance(paths, str) else list(paths))  # type: ignore[arg-type]
        real(store, paths)  # type: ignore[arg-type]

    monkeypatch.setattr(obstore, "delete", delete)
    staging = loc("staged/out.tif.partial")
    # a removal cut short after the first request leaves the record: the rest stays provably
    # a tileseg run's, which --resume or --overwrite clears
    assert delete_prefix(staging, last=staging.child("run.json")) == 4
    assert calls[-1] == ["staged/out.tif.partial/run.json"] and len(calls) == 2
    assert "staged/out.tif.partial/run.json" not in sum(calls[:-1], [])
    assert not [k for k in _keys(s3) if k.startswith("staged/")]


def test_a_missing_bucket_is_one_clear_error(s3: S3Server) -> None:
    with pytest.raises(OutputError, match="no-such-bucket-9.*bucket does not exist"):
        check_writable(StoreURL.parse("s3://no-such-bucket-9/out/mask.zarr"))
    check_writable(loc("out/mask.zarr"))  # and a good one passes, leaving nothing
    assert not any(k.startswith("out/") for k in _keys(s3))


def _keys(s3: S3Server) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_one_run_per_destination(s3: S3Server) -> None:
    where = loc("locks/one.lock")
    with StoreLock(where, lease_s=30) as first:
        record = json.loads(read_bytes(where))
        assert record["pid"] and record["host"] and record["token"] == first.token
        with pytest.raises(DestinationBusyError, match="another tileseg run"):
            StoreLock(where, lease_s=30).acquire()
    assert not exists(where)  # released
    with StoreLock(where, lease_s=30):  # and free again
        pass


def test_the_lease_is_renewed_while_the_run_goes_on(s3: S3Server) -> None:
    where = loc("locks/renewed.lock")
    with StoreLock(where, lease_s=0.9):
        first = json.loads(read_bytes(where))["lease_expires"]
        time.sleep(1.2)  # longer than the lease: only renewal keeps it
        assert json.loads(read_bytes(where))["lease_expires"] > first
        with pytest.raises(DestinationBusyError):
            StoreLock(where, lease_s=0.9).acquire()


def test_a_stale_lease_is_taken_over_and_the_old_holder_cannot_delete_it(s3: S3Server) -> None:
    where = loc("locks/stale.lock")
    dead = StoreLock(where, lease_s=0.3)
    dead.acquire()
    dead._stop.set()  # the holder dies: nobody renews
    dead._thread.join()  # type: ignore[union-attr]
    time.sleep(0.5)
    taker = StoreLock(where, lease_s=30)
    taker.acquire()
    assert json.loads(read_bytes(where))["token"] == taker.token
    dead.release()  # a late release from the old holder leaves the new lock alone
    assert json.loads(read_bytes(where))["token"] == taker.token
    taker.release()
    assert not exists(where)


def _forge_holder(where: StoreURL, **fields: object) -> None:
    """A lock object as a run on this machine would have left it, its lease ten minutes long,
    with ``fields`` changed."""
    from tileseg.outputs.liveness import ProcessIdentity

    record = {"tileseg_lock": 1, **ProcessIdentity.current().to_record(),
              "token": "the holder", "started": time.time(),
              "lease_expires": time.time() + 600, **fields}
    put_bytes(where, json.dumps(record).encode(), create_only=True)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="liveness proofs need /proc")
def test_a_killed_holder_on_this_machine_is_taken_over_without_waiting(
        s3: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    where = loc("locks/killed-here.lock")
    _forge_holder(where, pid=_dead_pid())
    taker = StoreLock(where, lease_s=30)
    with caplog.at_level("WARNING", logger="tileseg.outputs.store"):
        started = time.monotonic()
        taker.acquire()
    assert time.monotonic() - started < 5  # not the holder's 600 s lease
    assert json.loads(read_bytes(where))["token"] == taker.token
    assert any("no longer runs; taking the lock over" in r.getMessage() for r in caplog.records)
    taker.release()
    assert not exists(where)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="liveness proofs need /proc")
def test_a_holder_that_is_alive_or_elsewhere_keeps_the_lock(s3: S3Server) -> None:
    dead = _dead_pid()
    cases = {"alive-here": {"pid": os.getpid()},  # this very process, another lock object
             "other-host": {"pid": dead, "host": "another-node"},
             "other-boot": {"pid": dead, "boot_id": "a-boot-before-a-reboot"}}
    for name, identity in cases.items():
        where = loc(f"locks/{name}.lock")
        _forge_holder(where, **identity)
        with pytest.raises(DestinationBusyError, match=r"holds the lock.*lease runs out in 60\d s"):
            StoreLock(where, lease_s=30).acquire()
        assert json.loads(read_bytes(where))["token"] == "the holder", name


def test_two_takers_of_a_stale_lock_cannot_both_win(s3: S3Server) -> None:
    from tileseg.outputs.store import _obstore, open_store

    where = loc("locks/race.lock")
    _forge_holder(where, host="another-node", lease_expires=time.time() - 1)  # expired
    obstore, store = _obstore(), open_store(where.root)
    seen_by_second = obstore.get(store, where.key)  # read before the first taker replaced it
    first, second = StoreLock(where, lease_s=30), StoreLock(where, lease_s=30)
    first.acquire()

    class LateView:  # the store as the second taker saw it: the stale object, a real put
        get = staticmethod(lambda *_: seen_by_second)
        put = staticmethod(obstore.put)

    with pytest.raises(DestinationBusyError, match="took the stale lock first"):
        second._take_over_if_stale(LateView, store)
    assert json.loads(read_bytes(where))["token"] == first.token
    first.release()
    assert not exists(where)


@pytest.mark.parametrize("content", [b"a user's object", b'{"pid": 1, "lease_expires": 0}'])
def test_an_object_by_the_lock_key_that_tileseg_did_not_write_is_left_alone(
        s3: S3Server, content: bytes) -> None:
    where = loc(f"locks/foreign-{len(content)}.lock")
    put_bytes(where, content, create_only=True)
    with pytest.raises(OutputError, match="not a tileseg lock") as refused:
        StoreLock(where, lease_s=30).acquire()
    assert refused.value.exit_code == 4
    assert read_bytes(where) == content  # not taken over, not deleted


def test_an_output_whose_lock_key_holds_a_users_object_is_refused_before_any_work(
        s3: S3Server) -> None:
    from tileseg.vectorization import check_destination

    where = loc("layers/parcels.gpkg.lock")
    put_bytes(where, b"my notes", create_only=True)
    with pytest.raises(OutputError, match="not a tileseg lock"):
        check_destination(loc("layers/parcels.gpkg").url, overwrite=False)
    assert read_bytes(where) == b"my notes"


def test_a_neighbour_downloads_only_its_spill_from_a_piece(s3: S3Server) -> None:
    import numpy as np

    from tileseg.outputs.workdir import StoreWorkDir

    rng = np.random.default_rng(0)
    arrays = {"tiles": np.array([9, 0]), "mask": rng.integers(0, 7, (600, 600), dtype=np.uint8)}
    for key in ("to_r0_c1", "to_r1_c0"):
        for n in range(2):  # two parts each, like a corner and an edge strip
            arrays[f"{key}_rect{n}"] = np.array([0, 0, 80, 600])
            arrays[f"{key}_sum{n}"] = rng.random((6, 80, 600), dtype=np.float32)
            arrays[f"{key}_weight{n}"] = rng.random((80, 600), dtype=np.float32)
    work = StoreWorkDir(f"s3://{BUCKET}/work/run")
    spans = work.save_piece(0, 0, arrays)
    size = len(read_bytes(loc("work/run/pieces/r0_c0.npz")))
    wanted = [k for k in arrays if k.startswith("to_r0_c1_")]
    for span in (spans["to_r0_c1"], None):  # what the inferring task said; a resumed run's piece
        s3.traffic.reset()
        piece = work.load_spill(0, 0, "to_r0_c1", span)
        assert sorted(k for k in piece.files if k.startswith("to_r0_c1_")) == sorted(wanted)
        for name in wanted:
            np.testing.assert_array_equal(piece[name], arrays[name])
        # the other neighbour's arrays and the chunk's own mask stay on the store
        assert s3.traffic.bytes_out < 0.5 * size, (span is None, s3.traffic.bytes_out, size)
        assert s3.traffic.gets == (1 if span else 2)


@pytest.mark.parametrize("value", ["not a url", "127.0.0.1:9000", "ftp://host", "http://",
                                   "http://host:99999", "http://[::1", "http://host name"])
@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_a_malformed_endpoint_is_refused_before_any_request(
        variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # obstore panics on these (a Rust backtrace on stderr, then an exception that is not an
    # Exception); GDAL would fail with a network error
    from tileseg.errors import ConfigError
    from tileseg.outputs.store import open_store
    from tileseg.sources.remote import gdal_options

    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    for attempt in (lambda: StoreURL.parse("s3://bucket/key"),
                    lambda: open_store("s3://bucket"),
                    lambda: gdal_options("s3://bucket/scene.tif")):
        with pytest.raises(ConfigError, match=f"^{variable} .* is not an http:// or https:// URL"):
            attempt()
    StoreURL.parse("gs://bucket/key")  # not S3's business


@pytest.mark.parametrize("value", ["http://127.0.0.1:9000", "https://minio.example.org/",
                                   "http://[::1]:9000"])
def test_a_well_formed_endpoint_passes(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tileseg.sources.remote import s3_endpoint

    monkeypatch.setenv("AWS_ENDPOINT_URL", value)
    assert s3_endpoint() == value
