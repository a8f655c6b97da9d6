-- Generations of the reporting read model. Each lives in its own schema, tally_read_g<generation>; the
-- views in schema tally_read point at the live one, so BI tools read stable names across rebuilds.
CREATE SCHEMA IF NOT EXISTS tally_read;

-- Generation ids are never reused, so a dropped generation's id cannot be mistaken for a new one.
CREATE SEQUENCE tally_read_generation_ids;

CREATE TABLE tally_read_generations (
    generation  INTEGER PRIMARY KEY,
    live        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    promoted_at TIMESTAMPTZ
);

CREATE UNIQUE INDEX tally_read_generations_one_live ON tally_read_generations (live) WHERE live;
