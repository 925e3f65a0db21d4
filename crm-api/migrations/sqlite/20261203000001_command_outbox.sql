-- Commands the CRM decided on inside a write (a closed deal's report to the
-- lead service it came from), kept in the same transaction as the write and
-- moved to the feed's `commands` topic afterwards, so none is lost when the
-- feed cannot take it at that moment.
CREATE TABLE command_outbox (
    id TEXT PRIMARY KEY,
    envelope TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
