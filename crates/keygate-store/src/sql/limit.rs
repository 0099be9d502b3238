//! `LIMIT n` written into a query's SQL instead of bound.
//!
//! diesel writes `.limit(n)` as `LIMIT ?`. SQLite reads a `LIMIT` that is a
//! parameter when it plans the statement, so it marks the statement to be
//! planned again whenever that parameter is bound, and diesel binds it on every
//! run: a cached statement prepared anew each time (about 65,000 instructions
//! for the key change feed's poll, several times a second; `cargo xtask bench
//! --callgrind`, docs/benchmarks.md). With the number in the SQL the cached
//! statement is run as it is.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// `query LIMIT limit`, the number part of the SQL.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limited<Q> {
    query: Q,
    limit: u32,
}

/// `query` with at most `limit` rows, for a query without a `LIMIT` of its own.
pub(super) fn limited<Q>(query: Q, limit: u32) -> Limited<Q> {
    Limited { query, limit }
}

impl<Q: Query> Query for Limited<Q> {
    type SqlType = Q::SqlType;
}

/// No static id: diesel then keys its statement cache by the SQL, which holds
/// the number, so two limits never share a cached statement.
impl<Q> QueryId for Limited<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q, DB> QueryFragment<DB> for Limited<Q>
where
    Q: QueryFragment<DB>,
    DB: Backend,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.query.walk_ast(out.reborrow())?;
        out.push_sql(" LIMIT ");
        out.push_sql(&self.limit.to_string());
        Ok(())
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use diesel::prelude::*;
    use diesel::sqlite::Sqlite;

    use super::limited;
    use crate::sql::schema::key_changes;

    #[test]
    fn the_limit_is_in_the_sql_and_not_a_parameter() {
        let query = limited(
            key_changes::table
                .filter(key_changes::seq.gt(5_i64))
                .order(key_changes::seq.asc())
                .select(key_changes::seq),
            250,
        );
        let sql = diesel::debug_query::<Sqlite, _>(&query).to_string();
        assert!(sql.ends_with(" LIMIT 250 -- binds: [5]"), "{sql}");
    }
}
