//! The location service in Redis, shared by every gateway node: one hash
//! per address of record (contact → binding as JSON), a sorted set of each
//! AOR's earliest expiry for the sweeper, and a counter of bindings. Every
//! update is one Lua script, so the out-of-order rule and the replacement
//! are atomic across nodes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use switchboard_sip::registrar::Change;

use super::location::{
    Binding, Location, LocationError, Secs, Transport, Update, Updated, contact_key,
};

const UPDATE: &str = r#"
-- KEYS: aor hash, expiry zset, counter. ARGV: now, call_id, cseq, mode, aor,
-- then (contact key, expires_at, json) per contact.
local now = tonumber(ARGV[1])
local call_id, cseq, mode, aor = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local all = redis.call('HGETALL', KEYS[1])
local live, raw, delta, was = {}, {}, 0, 0
for i = 1, #all, 2 do
  local b = cjson.decode(all[i + 1])
  if b.expires_at > now then
    live[all[i]] = b; raw[all[i]] = all[i + 1]; was = was + 1
  else
    redis.call('HDEL', KEYS[1], all[i]); delta = delta - 1
  end
end
if mode == 'all' then
  for k, b in pairs(live) do
    if b.call_id == call_id and cseq <= b.cseq then return redis.error_reply('out_of_order') end
  end
  for k, b in pairs(live) do redis.call('HDEL', KEYS[1], k); delta = delta - 1 end
  live, raw = {}, {}
elseif mode == 'update' then
  for i = 6, #ARGV, 3 do
    local b = live[ARGV[i]]
    if b and b.call_id == call_id and cseq < b.cseq then return redis.error_reply('out_of_order') end
  end
  for i = 6, #ARGV, 3 do
    local k, exp = ARGV[i], tonumber(ARGV[i + 1])
    if live[k] then live[k] = nil; raw[k] = nil; redis.call('HDEL', KEYS[1], k); delta = delta - 1 end
    if exp > now then
      redis.call('HSET', KEYS[1], k, ARGV[i + 2])
      live[k] = { expires_at = exp }; raw[k] = ARGV[i + 2]; delta = delta + 1
    end
  end
end
if delta ~= 0 then redis.call('INCRBY', KEYS[3], delta) end
local out, earliest = { tostring(was) }, nil
for k, b in pairs(live) do
  out[#out + 1] = raw[k]
  if earliest == nil or b.expires_at < earliest then earliest = b.expires_at end
end
if earliest == nil then
  redis.call('DEL', KEYS[1]); redis.call('ZREM', KEYS[2], aor)
else
  redis.call('ZADD', KEYS[2], earliest, aor)
end
return out
"#;

const EXPIRE: &str = r#"
-- KEYS: expiry zset, counter. ARGV: now, aor key prefix, limit.
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local emptied, removed = {}, 0
for _, aor in ipairs(due) do
  local key = ARGV[2] .. aor
  local all = redis.call('HGETALL', key)
  local earliest = nil
  for i = 1, #all, 2 do
    local b = cjson.decode(all[i + 1])
    if b.expires_at > now then
      if earliest == nil or b.expires_at < earliest then earliest = b.expires_at end
    else
      redis.call('HDEL', key, all[i]); removed = removed + 1
    end
  end
  if earliest == nil then
    redis.call('DEL', key); redis.call('ZREM', KEYS[1], aor); emptied[#emptied + 1] = aor
  else
    redis.call('ZADD', KEYS[1], earliest, aor)
  end
end
if removed > 0 then redis.call('DECRBY', KEYS[2], removed) end
return emptied
"#;

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    contact: String,
    received: SocketAddr,
    transport: String,
    expires_at: Secs,
    call_id: String,
    cseq: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    path: Vec<String>,
}

impl From<Stored> for Binding {
    fn from(s: Stored) -> Self {
        Binding {
            contact: s.contact.into(),
            received: s.received,
            transport: match s.transport.as_str() {
                "TCP" => Transport::Tcp,
                "TLS" => Transport::Tls,
                _ => Transport::Udp,
            },
            expires_at: s.expires_at,
            call_id: s.call_id.into(),
            cseq: s.cseq,
            q: s.q.map(Into::into),
            instance: s.instance.map(Into::into),
            path: s.path.into_iter().map(Into::into).collect(),
        }
    }
}

/// Bindings in Redis.
pub struct RedisLocation {
    conn: ConnectionManager,
    prefix: String,
    update: Script,
    expire: Script,
    count: AtomicUsize,
}

impl std::fmt::Debug for RedisLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLocation")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn store_err(e: redis::RedisError) -> LocationError {
    if e.to_string().contains("out_of_order") {
        LocationError::OutOfOrder
    } else {
        LocationError::Store(e.to_string())
    }
}

impl RedisLocation {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LocationError> {
        let client = redis::Client::open(url).map_err(store_err)?;
        let conn = ConnectionManager::new(client).await.map_err(store_err)?;
        Ok(Self {
            conn,
            prefix: format!("{prefix}sip:"),
            update: Script::new(UPDATE),
            expire: Script::new(EXPIRE),
            count: AtomicUsize::new(0),
        })
    }

    fn aor_key(&self, aor: &str) -> String {
        format!("{}aor:{aor}", self.prefix)
    }
}

impl Location for RedisLocation {
    async fn update(&self, u: &Update<'_>) -> Result<Updated, LocationError> {
        let mode = match u.change {
            Change::Fetch => "fetch",
            Change::RemoveAll => "all",
            Change::Update(_) => "update",
        };
        let mut inv = self.update.prepare_invoke();
        inv.key(self.aor_key(u.aor))
            .key(format!("{}expiry", self.prefix))
            .key(format!("{}count", self.prefix))
            .arg(u.now)
            .arg(u.call_id)
            .arg(u.cseq)
            .arg(mode)
            .arg(u.aor);
        if let Change::Update(contacts) = u.change {
            for c in contacts {
                let expires_at = u.now + u64::from(c.expires_s);
                let stored = Stored {
                    contact: c.uri.to_owned(),
                    received: u.received,
                    transport: u.transport.as_str().to_owned(),
                    expires_at,
                    call_id: u.call_id.to_owned(),
                    cseq: u.cseq,
                    q: c.q.map(str::to_owned),
                    instance: c.instance.map(str::to_owned),
                    path: u.path.iter().map(|p| (*p).to_owned()).collect(),
                };
                let json = serde_json::to_string(&stored)
                    .map_err(|e| LocationError::Store(e.to_string()))?;
                inv.arg(contact_key(c.uri, c.instance))
                    .arg(if c.expires_s == 0 { 0 } else { expires_at })
                    .arg(json);
            }
        }
        let mut conn = self.conn.clone();
        let out: Vec<String> = inv.invoke_async(&mut conn).await.map_err(store_err)?;
        let was = out
            .first()
            .and_then(|w| w.parse::<usize>().ok())
            .unwrap_or(0);
        let mut bindings = Vec::with_capacity(out.len().saturating_sub(1));
        for json in out.iter().skip(1) {
            let s: Stored =
                serde_json::from_str(json).map_err(|e| LocationError::Store(e.to_string()))?;
            bindings.push(Binding::from(s));
        }
        bindings.sort_by(|a, b| a.contact.cmp(&b.contact));
        Ok(Updated {
            bindings,
            was_registered: was > 0,
        })
    }

    async fn lookup(&self, aor: &str, now: Secs) -> Result<Vec<Binding>, LocationError> {
        let mut conn = self.conn.clone();
        let values: Vec<String> = redis::cmd("HVALS")
            .arg(self.aor_key(aor))
            .query_async(&mut conn)
            .await
            .map_err(store_err)?;
        let mut out = Vec::new();
        for json in values {
            let s: Stored =
                serde_json::from_str(&json).map_err(|e| LocationError::Store(e.to_string()))?;
            if s.expires_at > now {
                out.push(Binding::from(s));
            }
        }
        Ok(out)
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    async fn expire(&self, now: Secs) -> Vec<String> {
        let mut conn = self.conn.clone();
        let emptied: Vec<String> = self
            .expire
            .key(format!("{}expiry", self.prefix))
            .key(format!("{}count", self.prefix))
            .arg(now)
            .arg(format!("{}aor:", self.prefix))
            .arg(1000)
            .invoke_async(&mut conn)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "SIP location sweep failed");
                Vec::new()
            });
        let count: Option<i64> = redis::cmd("GET")
            .arg(format!("{}count", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        self.count.store(
            usize::try_from(count.unwrap_or(0)).unwrap_or(0),
            Ordering::Relaxed,
        );
        emptied
    }
}
