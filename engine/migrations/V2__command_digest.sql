-- The 128-bit command fingerprint (issue 15 item 18): the first 16 bytes of BLAKE3 over the command's
-- payload layout. NULL on events written before it, which keep their 64-bit FNV-1a in
-- command_fingerprint; events that have a digest hold 0 there. Additive: old rows stay as they are.
ALTER TABLE tally_events
    ADD COLUMN command_digest BYTEA
        CONSTRAINT tally_events_command_digest_length CHECK (command_digest IS NULL OR octet_length(command_digest) = 16);
