//! A small builder for queries with optional filters: fixed SQL fragments
//! and numbered placeholders, every value bound. (sqlx's `Any` driver passes
//! the text to the database as is, and `$N` works on both.)

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AssertSqlSafe};

use super::auth::Principal;

#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_owned())
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub(crate) fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    /// Appends SQL text (never a value).
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Binds a value; returns its placeholder.
    pub(crate) fn arg(&mut self, value: impl Into<Arg>) -> String {
        self.args.push(value.into());
        format!("${}", self.args.len())
    }

    /// Appends ` AND <what the principal may see of alias>`.
    pub(crate) fn visible_to(&mut self, p: &Principal, alias: &str) -> &mut Self {
        let (cond, binds) = p.visible(alias, self.args.len() + 1);
        self.args.extend(binds.into_iter().map(Arg::Text));
        self.text.push_str(" AND ");
        self.text.push_str(&cond);
        self
    }

    pub(crate) fn query(&self) -> Query<'static, Any, AnyArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.text.clone()));
        for a in &self.args {
            q = match a {
                Arg::Text(t) => q.bind(t.clone()),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q
    }
}
