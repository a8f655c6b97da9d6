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
proto/tally/v1/events.proto (LogRecord) documents, each record's CRC-32C checked too. Needs nothing but
Python 3.8 or later. An incomplete last write at the very end of the last file (a crash mid-write, which
Tally cuts off when it opens the log) is reported on stderr and left out; anywhere else it is damage.
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


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for byte in data:
        c = CRC32C_TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


class Damaged(Exception):
    """A record that cannot be read: not a hash-chain question, the files themselves are damaged."""


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
    names = sorted(n for n in os.listdir(log_dir) if n.endswith(".seg"))
    for index, name in enumerate(names):
        with open(os.path.join(log_dir, name), "rb") as f:
            data = f.read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack_from("<I", data, at + 4) if at + 8 <= len(data) else (len(data),)
            body = data[at + 12:at + 12 + length]
            if at + 12 + length > len(data) and index == len(names) - 1:
                sys.stderr.write("left out an incomplete last write of %d bytes at the end of %s\n" % (len(data) - at, name))
                return
            if data[at:at + 4] != MAGIC or at + 12 + length > len(data):
                raise Damaged("%s at byte %d: not a whole record" % (name, at))
            if crc32c(body) != struct.unpack_from("<I", data, at + 8)[0]:
                raise Damaged("%s at byte %d: the record fails its checksum" % (name, at))
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
        elif linked:
            return False, "BROKEN at %s: it carries no hash links though events before it do" % where
        stream_links[stream], versions[stream], log_link = stream_link, version, next_log_link
        events += 1
    return True, "intact: %d events, %d with stored links, log hash at position %d: %s" % (events, linked, events, log_link.hex())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        ok, line = verify(sys.argv[1])
    except (Damaged, ValueError, IndexError) as damage:
        ok, line = False, "BROKEN: %s" % damage
    print(line)
    sys.exit(0 if ok else 1)
