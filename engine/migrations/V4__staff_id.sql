-- The staff member who made each change, as the call named them (issue 16: staff calls carry a staff
-- id). Empty when none was named and on events written before it. Additive.
ALTER TABLE tally_events ADD COLUMN staff_id TEXT NOT NULL DEFAULT '';
