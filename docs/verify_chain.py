#!/usr/bin/env python3
"""Checks a Tally embedded log's hash chains from its files alone, independently of Tally's own code.

    python3 docs/verify_chain.py DATA_DIR

DATA_DIR is what `tally serve --data` names (it holds `log/*.seg`); a PostgreSQL log can be checked by
copying it to an embedded one first (`tally store copy --from postgres://… --to file://DIR`): a copy
keeps positions and versions, so it chains to the same hashes.

Prints one line and exits 0 if every stored link matches:
    intact: N events, M with stored links, log hash at position N: HEX
or names the first broken link and exits 1:
    BROKEN at position P (STREAM version V): REASON

The algorithm is the one proto/README.md ("The hash chains") documents; the record framing is the one
proto/tally/v1/events.proto (LogRecord) documents. Needs nothing but Python 3.8 or later. The records'
CRC-32C (which guards against torn writes, not edits) is not checked here.
"""

import hashlib
import os
import struct
import sys

MAGIC = b"TLY1"
ZERO = bytes(32)
STREAM_TAG = b"tally.stream.v1"
LOG_TAG = b"tally.log.v1"
# EventEnvelope fields: stream_id, stream_version, global_position, stream_hash, log_hash.
STREAM_ID, STREAM_VERSION, GLOBAL_POSITION, STREAM_HASH, LOG_HASH = 1, 2, 3, 18, 19


def varint(buf, i):
    shift = result = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def fields(buf):
    """Each field of a protobuf message: (number, value, the field's raw bytes)."""
    i = 0
    while i < len(buf):
        start = i
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
        yield number, value, buf[start:i]


def envelopes(data_dir):
    """Every EventEnvelope of the log, in the order of its files and records."""
    log_dir = os.path.join(data_dir, "log")
    for name in sorted(n for n in os.listdir(log_dir) if n.endswith(".seg")):
        with open(os.path.join(log_dir, name), "rb") as f:
            data = f.read()
        at = 0
        while at + 12 <= len(data):
            if data[at:at + 4] != MAGIC:
                raise ValueError("%s at byte %d: not a record" % (name, at))
            (length,) = struct.unpack_from("<I", data, at + 4)
            body = data[at + 12:at + 12 + length]
            if len(body) < length:
                return  # a torn last write: Tally cuts it off when it opens the log
            for number, envelope, _ in fields(body):
                if number == 1:  # LogRecord.events
                    yield envelope
            at += 12 + length


def verify(data_dir):
    stream_links, versions, log_link = {}, {}, ZERO
    events = linked = 0
    for envelope in envelopes(data_dir):
        parsed = list(fields(envelope))
        value = {number: v for number, v, _ in parsed}
        stream = value.get(STREAM_ID, b"").decode("utf-8")
        version, position = value.get(STREAM_VERSION, 0), value.get(GLOBAL_POSITION, 0)
        where = "position %d (%s version %d)" % (position, stream, version)
        if position != events + 1:
            return False, "BROKEN at position %d: missing, the log goes on at position %d" % (events + 1, position)
        if version != versions.get(stream, 0) + 1:
            return False, "BROKEN at %s: the stream's version %d was expected here" % (where, versions.get(stream, 0) + 1)
        canonical = b"".join(raw for number, _, raw in parsed if number not in (STREAM_HASH, LOG_HASH))
        stream_link = hashlib.sha256(STREAM_TAG + stream_links.get(stream, ZERO) + canonical).digest()
        next_log_link = hashlib.sha256(LOG_TAG + log_link + stream_link).digest()
        stored_stream, stored_log = value.get(STREAM_HASH, b""), value.get(LOG_HASH, b"")
        if stored_stream or stored_log:
            if stored_stream != stream_link:
                return False, "BROKEN at %s: its stream hash does not match" % where
            if stored_log != next_log_link:
                return False, "BROKEN at %s: its log hash does not match" % where
            linked += 1
        stream_links[stream], versions[stream], log_link = stream_link, version, next_log_link
        events += 1
    return True, "intact: %d events, %d with stored links, log hash at position %d: %s" % (events, linked, events, log_link.hex())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    ok, line = verify(sys.argv[1])
    print(line)
    sys.exit(0 if ok else 1)
