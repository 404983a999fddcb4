#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets into corpus/<target>/ (see README.md).

Valid events and frames get the decoders past their first checks at once; libFuzzer mutates
from there. The encoders follow docs/format.md; if they drift from the engine, the seeds
are merely less useful, never wrong (the targets accept any bytes).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
FRAME_MAGIC = 0xFAC7F4A3


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def event(position, aggregate_id=b"account-1", created_by=None, correlation=None,
          causation=None, data=b'{"amount":5}', metadata=None) -> bytes:
    flags = ((created_by is not None) * 1 | (metadata is not None) * 2
             | (correlation is not None) * 4 | (causation is not None) * 8)
    cb, co, ca, me = (x or b"" for x in (created_by, correlation, causation, metadata))
    head = struct.pack("<QQ16sqqIHBBBBBBII", position, 1, bytes(range(16)),
                       1_700_000_000_000_000, 1_700_000_000_000_001, 1,
                       len(aggregate_id), len(b"Account"), len(b"Deposited"), len(cb), flags,
                       len(co), len(ca), len(data), len(me))
    assert len(head) == 68
    return head + aggregate_id + b"Account" + b"Deposited" + cb + co + ca + data + me


def frame(first_position, events) -> bytes:
    body = b"".join(struct.pack("<II", len(e), crc32c(e)) + e for e in events)
    head = struct.pack("<IIQII", FRAME_MAGIC, len(body), first_position, len(events), 1)
    return head + struct.pack("<I", crc32c(head + body)) + b"\0\0\0\0" + body


def journal(magic, appends) -> bytes:
    """A journal file: header, then one frame ("JREC", length, CRC32C of the length and the
    body) per append, each record a length and its bytes."""
    head = magic + struct.pack("<I", 1)
    out = head + struct.pack("<I", crc32c(head))
    for records in appends:
        body = b"".join(struct.pack("<I", len(r)) + r for r in records)
        length = struct.pack("<I", len(body))
        out += b"JREC" + length + struct.pack("<I", crc32c(length + body)) + body
    return out


def snapshot(version, aggregate_id, snapshot_type, state) -> bytes:
    body = struct.pack("<QIqHBBI", version, 1, 1_700_000_000_000_000, len(aggregate_id),
                       len(snapshot_type), 0, len(state)) + aggregate_id + snapshot_type + state
    return b"SNAP" + struct.pack("<II", len(body), crc32c(body)) + body


def archived(segment_no, first, last) -> bytes:
    return bytes([1, 0, 0, 0]) + struct.pack("<IQQQQQq", segment_no, first, last, 4096, 900,
                                             0x1234, 1_700_000_000_000_000)


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"seed-{name}"), "wb") as f:
        f.write(data)


def main():
    events = [
        event(1),
        event(2, created_by=b"user:7", correlation=b"c-1", causation=b"c-0",
              metadata=b'{"correlation_id":"c-1","causation_id":"c-0"}'),
        event(3, aggregate_id="k\u00e9\"\\".encode(), data=b'{"a":[1,2,{"b":null}],"s":"\\u00e9"}'),
        event(4, data=b"{}", metadata=b"{}"),
    ]
    for i, e in enumerate(events):
        write("event_decode", f"event-{i}", e)
    write("frame_decode", "empty", frame(1, []))
    write("frame_decode", "one", frame(1, events[:1]))
    write("frame_decode", "all", frame(1, events))
    # recovery: kind byte (odd = indexed), then damages: tag % 3 (flip, truncate, append),
    # file byte, then offset u32 + mask / length u32 / count + bytes.
    for kind in (0, 1):
        for file in range(8):
            write("recovery", f"k{kind}-flip-{file}", bytes([kind, 0, file]) + struct.pack("<IB", 40 + 97 * file, 1))
            write("recovery", f"k{kind}-cut-{file}", bytes([kind, 1, file]) + struct.pack("<I", 100 + 300 * file))
            write("recovery", f"k{kind}-append-{file}", bytes([kind, 2, file, 5]) + b"\xfa\x00\x01\x02\x03")
    write("recovery", "none", b"\x00")
    write("journal_decode", "empty", journal(b"FSPROJ01", []))
    write("journal_decode", "frames", journal(b"FSPROJ01", [[b'{"type":"live"}', b""], [b"x" * 20]]))
    snap_head = b"FSSNAPLG" + struct.pack("<I", 1)
    snap_head += struct.pack("<I", crc32c(snap_head))
    write("snapshot_log", "record", snapshot(3, b"account-1", b"Balance", b'{"total":5}'))
    write("snapshot_log", "log", snap_head + snapshot(3, b"account-1", b"Balance", b'{"total":5}')
          + snapshot(4, b"account-1", b"Balance", b"{}"))
    write("archive_manifest", "record", archived(1, 1, 100))
    # The record that made check_sequence overflow (see README.md, "Found so far").
    write("archive_manifest", "last-position-max", archived(1, 1, 2**64 - 1))
    write("archive_manifest", "manifest", journal(b"FSARCHV1", [[archived(1, 1, 100)],
                                                                [archived(2, 101, 150)]]))


if __name__ == "__main__":
    main()
