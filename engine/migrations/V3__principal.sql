-- Who made each change (issue 16): the API key the call was authenticated with and its roles. Empty for
-- what the engine does by itself and on events written before it. Additive: old rows read as empty.
ALTER TABLE tally_events
    ADD COLUMN principal TEXT NOT NULL DEFAULT '',
    ADD COLUMN principal_roles TEXT NOT NULL DEFAULT '';
