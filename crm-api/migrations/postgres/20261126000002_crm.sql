-- The CRM proper: who works here, the customers and what is done with them.
-- Ids are UUIDv7 text; times are microseconds since the Unix epoch.

CREATE TABLE departments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- Users of the CRM. `routing_id` links a user to a manager id of the
-- gateway's routing configuration, so routing decisions set owners.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    routing_id TEXT UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('manager', 'head', 'admin')),
    department_id TEXT REFERENCES departments (id),
    created_at BIGINT NOT NULL
);

-- API tokens, stored as SHA-256 of the token (tokens are 256 random bits).
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    token_sha256 TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('company', 'person')),
    status TEXT NOT NULL CHECK (status IN ('potential', 'current')),
    name TEXT NOT NULL,
    owner_id TEXT REFERENCES users (id),
    department_id TEXT REFERENCES departments (id),
    source TEXT,
    search_text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    promoted_at BIGINT,
    version BIGINT NOT NULL
);
CREATE INDEX clients_by_owner ON clients (owner_id, updated_at);
CREATE INDEX clients_by_department ON clients (department_id, updated_at);
CREATE INDEX clients_by_update ON clients (updated_at, id);

CREATE TABLE contact_persons (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients (id),
    name TEXT NOT NULL,
    position TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX contact_persons_by_client ON contact_persons (client_id);

-- How a customer is recognised: one identity belongs to one client.
CREATE TABLE identities (
    kind TEXT NOT NULL CHECK (kind IN ('phone', 'email', 'account')),
    value TEXT NOT NULL,
    client_id TEXT NOT NULL REFERENCES clients (id),
    contact_person_id TEXT REFERENCES contact_persons (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX identities_by_client ON identities (client_id);

ALTER TABLE interactions ADD COLUMN client_id TEXT;
ALTER TABLE interactions ADD COLUMN conversation TEXT;
CREATE INDEX interactions_by_client ON interactions (client_id, occurred_at);
CREATE INDEX interactions_by_conversation ON interactions (conversation, occurred_at);

-- The client card: everything that happened, as it was when it happened.
CREATE TABLE timeline_entries (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    ref_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX timeline_by_client ON timeline_entries (client_id, at DESC, id DESC);

CREATE TABLE pipelines (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE stages (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL REFERENCES pipelines (id),
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('open', 'won', 'lost')),
    deadline_hours INTEGER,
    UNIQUE (pipeline_id, position)
);

CREATE TABLE deals (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients (id),
    pipeline_id TEXT NOT NULL REFERENCES pipelines (id),
    stage_id TEXT NOT NULL REFERENCES stages (id),
    title TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    lost_reason TEXT,
    owner_id TEXT REFERENCES users (id),
    department_id TEXT REFERENCES departments (id),
    stage_entered_at BIGINT NOT NULL,
    stage_deadline_at BIGINT,
    closed_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX deals_by_client ON deals (client_id);
CREATE INDEX deals_by_owner ON deals (owner_id, updated_at);
CREATE INDEX deals_by_stage ON deals (stage_id, updated_at);

CREATE TABLE deal_stage_history (
    id TEXT PRIMARY KEY,
    deal_id TEXT NOT NULL REFERENCES deals (id),
    from_stage_id TEXT,
    to_stage_id TEXT NOT NULL,
    changed_by TEXT,
    changed_at BIGINT NOT NULL
);
CREATE INDEX deal_stage_history_by_deal ON deal_stage_history (deal_id, changed_at);

-- Tasks and calendar entries (kind 'meeting' or 'call' have a time span).
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('task', 'meeting', 'call')),
    title TEXT NOT NULL,
    due_at BIGINT,
    starts_at BIGINT,
    ends_at BIGINT,
    owner_id TEXT REFERENCES users (id),
    department_id TEXT REFERENCES departments (id),
    client_id TEXT REFERENCES clients (id),
    deal_id TEXT REFERENCES deals (id),
    done_at BIGINT,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX tasks_by_owner ON tasks (owner_id, due_at);
CREATE INDEX tasks_by_client ON tasks (client_id);

CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients (id),
    subject TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'pending', 'solved', 'closed')),
    sla_level TEXT NOT NULL CHECK (sla_level IN ('standard', 'priority', 'critical')),
    due_at BIGINT NOT NULL,
    time_spent_minutes BIGINT NOT NULL,
    owner_id TEXT REFERENCES users (id),
    department_id TEXT REFERENCES departments (id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX tickets_by_owner ON tickets (owner_id, updated_at);
CREATE INDEX tickets_by_client ON tickets (client_id);

CREATE TABLE notes (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients (id),
    deal_id TEXT REFERENCES deals (id),
    author_id TEXT,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX notes_by_client ON notes (client_id);

-- Files, stored content-addressed (SHA-256) under the data directory.
CREATE TABLE attachments (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients (id),
    deal_id TEXT REFERENCES deals (id),
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    uploaded_by TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX attachments_by_client ON attachments (client_id);

-- Every write through the API: who, what, when, from where.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    user_id TEXT,
    action TEXT NOT NULL,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    remote_addr TEXT,
    details TEXT NOT NULL
);
CREATE INDEX audit_by_entity ON audit_log (entity, entity_id, at);

-- POST responses by Idempotency-Key, per user.
CREATE TABLE idempotency_keys (
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- The default sales scenario.
INSERT INTO pipelines (id, name, created_at) VALUES ('00000000-0000-7000-8000-000000000001', 'Sales', 0);
INSERT INTO stages (id, pipeline_id, name, position, outcome, deadline_hours) VALUES
    ('00000000-0000-7000-8000-000000000011', '00000000-0000-7000-8000-000000000001', 'New', 1, 'open', 24),
    ('00000000-0000-7000-8000-000000000012', '00000000-0000-7000-8000-000000000001', 'Qualified', 2, 'open', 72),
    ('00000000-0000-7000-8000-000000000013', '00000000-0000-7000-8000-000000000001', 'Proposal', 3, 'open', 120),
    ('00000000-0000-7000-8000-000000000014', '00000000-0000-7000-8000-000000000001', 'Negotiation', 4, 'open', 240),
    ('00000000-0000-7000-8000-000000000015', '00000000-0000-7000-8000-000000000001', 'Won', 5, 'won', NULL),
    ('00000000-0000-7000-8000-000000000016', '00000000-0000-7000-8000-000000000001', 'Lost', 6, 'lost', NULL);

-- Substring search on names, phones and emails stays fast with trigrams.
-- Needs the pg_trgm extension (in PostgreSQL's contrib; creating it needs a
-- role allowed to, or an administrator creating it beforehand).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX clients_search ON clients USING gin (search_text gin_trgm_ops);
