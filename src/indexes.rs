//! Index lifecycle: every table mapping writes through an alias to a versioned index.
//!
//! Contract: [`ensure`] returns the concrete index behind `alias`, creating `<alias>_v1` from
//! the mapping file with the alias attached in the same create request (so the alias never
//! points at a half-configured index) when neither exists yet. Writing through an alias lets a
//! later reindex build `<alias>_v2` and swap the alias atomically. If the alias is missing while
//! a checkpoint exists, the index was deleted or wiped behind our back: that is reported as a
//! fatal error instead of silently re-creating an empty index and resuming past the lost data.

use std::path::Path;
use std::time::Duration;

use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot read mapping file {path}: {reason}")]
    Mapping { path: String, reason: String },
    #[error("cannot reach Elasticsearch: {0}")]
    Unreachable(String),
    #[error("alias `{alias}` does not exist although a checkpoint does: the index was deleted or wiped. Delete the checkpoint file ({checkpoint}) to rebuild the index from scratch, or run a reindex")]
    Vanished { alias: String, checkpoint: String },
    #[error("`{name}` exists as a concrete index, not an alias; the indexer writes through aliases. Reindex it into `{name}_v1` and add the alias, or choose another index name")]
    NotAnAlias { name: String },
    #[error("TLS to Elasticsearch failed: {reason}; {fix}")]
    Tls { reason: String, fix: &'static str },
    #[error("Elasticsearch answered {what} with HTTP {status}: {fix} ({body})")]
    Auth {
        what: String,
        status: u16,
        fix: &'static str,
        body: String,
    },
    #[error("Elasticsearch refused {what}: HTTP {status}: {body}")]
    Refused { what: String, status: u16, body: String },
}

impl IndexError {
    pub fn is_transient(&self) -> bool {
        matches!(self, IndexError::Unreachable(_))
            || matches!(self, IndexError::Refused { status, .. } if *status >= 500)
    }
}

/// Largest index-management answer read (aliases and index metadata are a few KiB).
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

pub(crate) async fn call(
    client: &Elasticsearch,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, serde_json::Value), IndexError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let resp = client
        .send(method, path, headers, None::<&()>, body, Some(Duration::from_secs(30)))
        .await
        .map_err(|e| {
            let text = crate::tls::chain(&e);
            match crate::tls::tls_problem(&text) {
                Some(p) => IndexError::Tls {
                    fix: crate::tls::es_fix(p),
                    reason: text,
                },
                None => IndexError::Unreachable(text),
            }
        })?;
    let status = resp.status_code().as_u16();
    if status == 401 || status == 403 {
        let bytes = resp.bytes().await.unwrap_or_default();
        let body: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        return Err(IndexError::Auth {
            what: format!("{method:?} {path}"),
            status,
            fix: if status == 401 {
                "the credentials are missing or wrong: set sink.username with sink.password_env / sink.password_file, or sink.api_key_env / sink.api_key_file"
            } else {
                "the user lacks privileges: grant it write, view_index_metadata and read on the alias and its <alias>_v* indexes, plus create_index and manage for the first start, which creates <alias>_v1 (README: Security)"
            },
            body,
        });
    }
    if let Some(len) = resp.content_length().filter(|l| *l > MAX_RESPONSE) {
        return Err(IndexError::Refused {
            what: format!("{method:?} {path}"),
            status,
            body: format!("an answer of {len} bytes, more than the {MAX_RESPONSE} read for index management"),
        });
    }
    let bytes = resp.bytes().await.map_err(|e| IndexError::Unreachable(e.to_string()))?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    ))
}

/// Makes sure `alias` exists; returns the concrete index it points to.
pub async fn ensure(
    client: &Elasticsearch,
    alias: &str,
    mapping: &Path,
    checkpoint: Option<&Path>,
) -> Result<String, IndexError> {
    let (status, body) = call(client, Method::Get, &format!("/_alias/{alias}"), None).await?;
    if status == 200 {
        if let Some(obj) = body.as_object() {
            // The write index if several carry the alias (a reindex in progress), else the one.
            let write = obj
                .iter()
                .find(|(_, v)| v["aliases"][alias]["is_write_index"] == serde_json::Value::Bool(true));
            if let Some((name, _)) = write.or_else(|| obj.iter().next()) {
                return Ok(name.clone());
            }
        }
    } else if status != 404 {
        return Err(IndexError::Refused {
            what: format!("GET /_alias/{alias}"),
            status,
            body: body.to_string(),
        });
    }
    let (exists, _) = call(client, Method::Head, &format!("/{alias}"), None).await?;
    if exists == 200 {
        return Err(IndexError::NotAnAlias { name: alias.into() });
    }
    if let Some(cp) = checkpoint {
        return Err(IndexError::Vanished {
            alias: alias.into(),
            checkpoint: cp.display().to_string(),
        });
    }
    let index = format!("{alias}_v1");
    // The alias is attached in the create request itself, so it never points at a half-made index.
    create_from_mapping(
        client,
        &index,
        mapping,
        serde_json::json!({}),
        serde_json::json!({ alias: { "is_write_index": true } }),
    )
    .await?;
    tracing::info!(%alias, %index, "created index");
    Ok(index)
}

fn refused(what: String, status: u16, body: &serde_json::Value) -> IndexError {
    IndexError::Refused {
        what,
        status,
        body: body.to_string(),
    }
}

/// The concrete indexes `alias` points to (none if the alias does not exist).
pub async fn indexes_of(client: &Elasticsearch, alias: &str) -> Result<Vec<String>, IndexError> {
    let (status, body) = call(client, Method::Get, &format!("/_alias/{alias}"), None).await?;
    match status {
        200 => Ok(body
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()),
        404 => Ok(vec![]),
        s => Err(refused(format!("GET /_alias/{alias}"), s, &body)),
    }
}

/// Whether `index` (or an alias of that name) exists.
pub async fn exists(client: &Elasticsearch, index: &str) -> Result<bool, IndexError> {
    let (status, _) = call(client, Method::Head, &format!("/{index}"), None).await?;
    Ok(status == 200)
}

/// Creates `index` from the mapping file, with `settings` merged into the file's settings and
/// `aliases` attached in the same request.
pub async fn create_from_mapping(
    client: &Elasticsearch,
    index: &str,
    mapping: &Path,
    settings: serde_json::Value,
    aliases: serde_json::Value,
) -> Result<(), IndexError> {
    let bad = |reason: String| IndexError::Mapping {
        path: mapping.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(mapping).map_err(|e| bad(e.to_string()))?;
    let mut body: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let obj = body.as_object_mut().ok_or_else(|| bad("not a JSON object".into()))?;
    let merged = obj.entry("settings").or_insert_with(|| serde_json::json!({}));
    if let (Some(m), Some(extra)) = (merged.as_object_mut(), settings.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    obj.insert("aliases".into(), aliases);
    let (status, resp) = call(
        client,
        Method::Put,
        &format!("/{index}"),
        Some(serde_json::to_vec(&body).expect("json")),
    )
    .await?;
    if status >= 300 {
        return Err(refused(format!("creating index {index}"), status, &resp));
    }
    Ok(())
}

/// Applies alias `actions` in one atomic `_aliases` request.
pub async fn update_aliases(client: &Elasticsearch, actions: serde_json::Value) -> Result<(), IndexError> {
    let body = serde_json::json!({ "actions": actions });
    let (status, resp) = call(
        client,
        Method::Post,
        "/_aliases",
        Some(serde_json::to_vec(&body).expect("json")),
    )
    .await?;
    if status >= 300 {
        return Err(refused(format!("POST /_aliases {body}"), status, &resp));
    }
    Ok(())
}

/// `index.gc_deletes` as set on the index (`None` when it is at the cluster default).
pub async fn gc_deletes(client: &Elasticsearch, index: &str) -> Result<Option<String>, IndexError> {
    let path = format!("/{index}/_settings");
    let (status, body) = call(client, Method::Get, &path, None).await?;
    if status != 200 {
        return Err(refused(format!("GET {path}"), status, &body));
    }
    Ok(body[index]["settings"]["index"]["gc_deletes"]
        .as_str()
        .map(str::to_string))
}

/// Sets (or, with `null`, resets) dynamic index settings.
pub async fn put_settings(client: &Elasticsearch, index: &str, settings: serde_json::Value) -> Result<(), IndexError> {
    let path = format!("/{index}/_settings");
    let (status, body) = call(
        client,
        Method::Put,
        &path,
        Some(serde_json::to_vec(&settings).expect("json")),
    )
    .await?;
    if status >= 300 {
        return Err(refused(format!("PUT {path} {settings}"), status, &body));
    }
    Ok(())
}

/// Deletes `index`; an index that is already gone is fine.
pub async fn delete(client: &Elasticsearch, index: &str) -> Result<(), IndexError> {
    let (status, body) = call(client, Method::Delete, &format!("/{index}"), None).await?;
    if status >= 300 && status != 404 {
        return Err(refused(format!("DELETE /{index}"), status, &body));
    }
    Ok(())
}

/// Refreshes `index` and returns its document count.
pub async fn refreshed_count(client: &Elasticsearch, index: &str) -> Result<u64, IndexError> {
    let (status, body) = call(client, Method::Post, &format!("/{index}/_refresh"), None).await?;
    if status >= 300 {
        return Err(refused(format!("POST /{index}/_refresh"), status, &body));
    }
    let (status, body) = call(client, Method::Get, &format!("/{index}/_count"), None).await?;
    match body["count"].as_u64() {
        Some(n) if status == 200 => Ok(n),
        _ => Err(refused(format!("GET /{index}/_count"), status, &body)),
    }
}
