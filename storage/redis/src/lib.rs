//! [`RoutingState`] in Redis, for several gateway nodes deciding on the same
//! managers. Every operation that reads and writes is one Lua script, so it
//! is atomic and one round trip: a claim checks the contact's assignment and
//! the manager's live holds and records the new one in the same step.
//!
//! Keys, under a prefix (`sb:` by default):
//! - `m:{manager}` hash: `presence`, `registered`, `last_turn`, `pass`
//! - `held:{manager}:{workload}` sorted set: contact → held-until (ms); the
//!   manager's load is the count of members held past now
//! - `a:{workload}:{contact}`: `{manager}\t{held-until}`
//! - `turn`: the assignment counter
//! - `owner:{contact}`: the responsible manager
//!
//! Scripts build some keys from their arguments, so this layout needs a
//! single Redis (or Redis with all keys in one hash slot), not a cluster.

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use switchboard_config::Workload;
use switchboard_storage::state::{
    Claim, ClaimOutcome, ManagerStatus, Millis, Presence, RoutingState, StateError,
};

/// The claim: see the module docs. Returns `{0, turn}`, `{1, holder}` or `{2}`.
const CLAIM: &str = r"
local a = redis.call('GET', KEYS[1])
if a then
  local tab = string.find(a, '\t', 1, true)
  local holder = string.sub(a, 1, tab - 1)
  local until_ms = tonumber(string.sub(a, tab + 1))
  if until_ms > tonumber(ARGV[3]) then return {1, holder} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return {2, ''} end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
local turn = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[3], 'last_turn', turn)
redis.call('HINCRBY', KEYS[3], 'pass', ARGV[5])
redis.call('SET', KEYS[1], ARGV[1] .. '\t' .. ARGV[4], 'PX', ARGV[7])
return {0, tostring(turn)}
";

/// Statuses of ARGV[3..] at ARGV[2] under prefix ARGV[1]: per manager
/// presence, registered, last_turn, pass, then the load of each workload.
const STATUSES: &str = r"
local out = {}
local workloads = {'call', 'chat', 'email', 'lead'}
for i = 3, #ARGV do
  local id = ARGV[i]
  local h = redis.call('HMGET', ARGV[1] .. 'm:' .. id, 'presence', 'registered', 'last_turn', 'pass')
  table.insert(out, h[1] or '')
  table.insert(out, h[2] or '0')
  table.insert(out, h[3] or '0')
  table.insert(out, h[4] or '0')
  for _, w in ipairs(workloads) do
    table.insert(out, redis.call('ZCOUNT', ARGV[1] .. 'held:' .. id .. ':' .. w, '(' .. ARGV[2], '+inf'))
  end
end
return out
";

/// Release: deletes the assignment KEYS[1] and its hold; returns the holder.
const RELEASE: &str = r"
local a = redis.call('GET', KEYS[1])
if not a then return false end
local holder = string.sub(a, 1, string.find(a, '\t', 1, true) - 1)
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[1] .. 'held:' .. holder .. ':' .. ARGV[2], ARGV[3])
return holder
";

/// How long past its hold an assignment key lingers before Redis drops it
/// (the hold itself is checked against the caller's clock).
const LINGER_MS: u64 = 60_000;

/// Routing state in one Redis, shared by every gateway node using `prefix`.
#[derive(Clone)]
pub struct RedisState {
    conn: ConnectionManager,
    prefix: String,
    claim: Script,
    statuses: Script,
    release: Script,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn backend(op: &'static str) -> impl FnOnce(redis::RedisError) -> StateError {
    move |e| StateError::Backend {
        op,
        source: Box::new(e),
    }
}

impl RedisState {
    /// Connects (reconnecting on its own later) to `url`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StateError> {
        let client = redis::Client::open(url).map_err(backend("connect"))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(backend("connect"))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            claim: Script::new(CLAIM),
            statuses: Script::new(STATUSES),
            release: Script::new(RELEASE),
        })
    }

    /// The claim script's SHA-1, for running it from `redis-benchmark`.
    pub fn claim_script_sha(&self) -> String {
        self.claim.get_hash().to_owned()
    }

    /// The claim script's source and the keys and arguments of one claim,
    /// in `EVALSHA sha numkeys keys... args...` order.
    pub fn claim_invocation(&self, c: &Claim<'_>) -> (Vec<String>, Vec<String>) {
        let until = c
            .now
            .saturating_add(i64::try_from(c.hold.as_millis()).unwrap_or(i64::MAX));
        let px = u64::try_from(c.hold.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(LINGER_MS);
        let keys = vec![
            self.assignment_key(c.contact, c.workload),
            format!("{}held:{}:{}", self.prefix, c.manager, c.workload.as_str()),
            format!("{}m:{}", self.prefix, c.manager),
            format!("{}turn", self.prefix),
        ];
        let args = vec![
            c.manager.to_owned(),
            c.capacity.to_string(),
            c.now.to_string(),
            until.to_string(),
            c.stride.to_string(),
            c.contact.to_owned(),
            px.to_string(),
        ];
        (keys, args)
    }

    fn assignment_key(&self, contact: &str, w: Workload) -> String {
        format!("{}a:{}:{}", self.prefix, w.as_str(), contact)
    }

    fn owner_key(&self, contact: &str) -> String {
        format!("{}owner:{}", self.prefix, contact)
    }

    fn manager_key(&self, id: &str) -> String {
        format!("{}m:{}", self.prefix, id)
    }
}

fn parse_presence(text: &str) -> Presence {
    Presence::parse(text).unwrap_or_default()
}

impl RoutingState for RedisState {
    async fn statuses(&self, ids: &[&str], now: Millis) -> Result<Vec<ManagerStatus>, StateError> {
        let mut inv = self.statuses.prepare_invoke();
        inv.arg(&self.prefix).arg(now);
        for id in ids {
            inv.arg(*id);
        }
        let flat: Vec<redis::Value> = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend("read statuses"))?;
        let text = |v: &redis::Value| -> String {
            match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                redis::Value::Int(i) => i.to_string(),
                _ => String::new(),
            }
        };
        Ok(flat
            .chunks(8)
            .map(|c| ManagerStatus {
                presence: parse_presence(&text(&c[0])),
                registered: text(&c[1]) == "1",
                last_turn: text(&c[2]).parse().unwrap_or(0),
                pass: text(&c[3]).parse().unwrap_or(0),
                load: [4, 5, 6, 7].map(|i| text(&c[i]).parse().unwrap_or(0)),
            })
            .collect())
    }

    async fn set_presence(&self, id: &str, presence: Presence) -> Result<(), StateError> {
        let _: () = self
            .conn
            .clone()
            .hset(self.manager_key(id), "presence", presence.as_str())
            .await
            .map_err(backend("set presence"))?;
        Ok(())
    }

    async fn set_registered(&self, id: &str, registered: bool) -> Result<(), StateError> {
        let _: () = self
            .conn
            .clone()
            .hset(self.manager_key(id), "registered", u8::from(registered))
            .await
            .map_err(backend("set registration"))?;
        Ok(())
    }

    async fn claim(&self, c: &Claim<'_>) -> Result<ClaimOutcome, StateError> {
        let (keys, args) = self.claim_invocation(c);
        let mut inv = self.claim.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in &args {
            inv.arg(a);
        }
        let (code, detail): (i64, String) = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend("claim"))?;
        Ok(match code {
            0 => ClaimOutcome::Claimed {
                turn: detail.parse().unwrap_or(0),
            },
            1 => ClaimOutcome::AlreadyAssigned { manager: detail },
            _ => ClaimOutcome::OverCapacity,
        })
    }

    async fn release(
        &self,
        contact: &str,
        workload: Workload,
    ) -> Result<Option<String>, StateError> {
        self.release
            .key(self.assignment_key(contact, workload))
            .arg(&self.prefix)
            .arg(workload.as_str())
            .arg(contact)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend("release"))
    }

    async fn assignee(
        &self,
        contact: &str,
        workload: Workload,
        now: Millis,
    ) -> Result<Option<String>, StateError> {
        let a: Option<String> = self
            .conn
            .clone()
            .get(self.assignment_key(contact, workload))
            .await
            .map_err(backend("read assignment"))?;
        Ok(a.and_then(|a| {
            let (holder, until) = a.split_once('\t')?;
            (until.parse::<Millis>().ok()? > now).then(|| holder.to_owned())
        }))
    }

    async fn owner(&self, contact: &str) -> Result<Option<String>, StateError> {
        self.conn
            .clone()
            .get(self.owner_key(contact))
            .await
            .map_err(backend("read owner"))
    }

    async fn set_owner(&self, contact: &str, manager: Option<&str>) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let key = self.owner_key(contact);
        let _: () = match manager {
            Some(id) => conn.set(key, id).await,
            None => conn.del(key).await,
        }
        .map_err(backend("set owner"))?;
        Ok(())
    }

    async fn set_owner_if_none(&self, contact: &str, manager: &str) -> Result<bool, StateError> {
        self.conn
            .clone()
            .set_nx(self.owner_key(contact), manager)
            .await
            .map_err(backend("set owner"))
    }
}
