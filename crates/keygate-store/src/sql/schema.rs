//! Diesel table definitions shared by the SQLite and PostgreSQL backends. Both
//! migration folders create exactly these columns with portable types (TEXT,
//! BIGINT), so one set of queries serves both.

diesel::table! {
    accounts (id) {
        id -> Text,
        name -> Text,
        email -> Nullable<Text>,
        balance_micros -> BigInt,
        reserved_micros -> BigInt,
        created_at -> BigInt,
        tier -> Nullable<Text>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        account_id -> Text,
        name -> Text,
        kind -> Text,
        key_hash -> Text,
        start -> Text,
        scopes -> Text,
        models -> Text,
        origins -> Text,
        expires_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        rpm -> Nullable<BigInt>,
        tpm -> Nullable<BigInt>,
        max_parallel -> Nullable<BigInt>,
        spend_limit_micros -> Nullable<BigInt>,
        metadata -> Text,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
        spent_micros -> BigInt,
        reserved_micros -> BigInt,
    }
}

diesel::table! {
    key_changes (seq) {
        seq -> BigInt,
        key_id -> Text,
        key_hash -> Text,
        changed_at -> BigInt,
    }
}

diesel::table! {
    reservations (id) {
        id -> Text,
        account_id -> Text,
        key_id -> Text,
        amount_micros -> BigInt,
        created_at -> BigInt,
        expires_at -> BigInt,
        swept_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    usage_records (id) {
        id -> BigInt,
        at -> BigInt,
        key_id -> Text,
        account_id -> Text,
        model -> Text,
        upstream -> Text,
        input_tokens -> BigInt,
        output_tokens -> BigInt,
        cached_tokens -> BigInt,
        cost_micros -> BigInt,
        latency_ms -> BigInt,
        ttfb_ms -> BigInt,
        stream -> BigInt,
        status -> BigInt,
        client_name -> Nullable<Text>,
        usage_source -> Text,
        client_ip -> Nullable<Text>,
        attempts -> BigInt,
    }
}

diesel::joinable!(api_keys -> accounts (account_id));
diesel::allow_tables_to_appear_in_same_query!(
    accounts,
    api_keys,
    key_changes,
    reservations,
    usage_records
);
