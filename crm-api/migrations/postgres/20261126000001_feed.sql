-- What the feed has told the CRM so far: every interaction, and the contact
-- identities they came from.
CREATE TABLE contacts (
    key TEXT PRIMARY KEY,
    phone TEXT,
    email TEXT,
    name TEXT,
    first_seen_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    interaction_count BIGINT NOT NULL
);

CREATE TABLE interactions (
    id TEXT PRIMARY KEY,
    contact_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    envelope TEXT NOT NULL
);
CREATE INDEX interactions_by_contact ON interactions (contact_key, occurred_at DESC, id DESC);
CREATE INDEX interactions_by_time ON interactions (occurred_at DESC, id DESC);

-- Feed records that could not be applied (unknown version, bad JSON): kept,
-- never dropped, so they can be inspected and replayed after a fix.
CREATE TABLE feed_rejects (
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    offset_id BIGINT NOT NULL,
    reason TEXT NOT NULL,
    value BYTEA NOT NULL,
    rejected_at BIGINT NOT NULL,
    PRIMARY KEY (topic, partition_id, offset_id)
);
