//! Search helpers for Chinese text on a stock Elasticsearch / OpenSearch (no ik or smartcn
//! plugin): the words are cut here, and the index only splits on whitespace.
//!
//! Contract:
//! * [`Tokenizer::tokens`] is jieba's search-mode cut (`cut_for_search`, HMM on) of a text,
//!   lowercased, without whitespace or punctuation-only words, joined by single spaces. An
//!   index field mapped with the `whitespace` analyzer therefore holds exactly these words, and
//!   a query cut the same way ([`Tokenizer::query_tokens`], precise mode, whose words are a
//!   subset of the search-mode words for the same text) matches them exactly.
//! * [`TokenFields`] adds `<field>_tokens` beside each configured field (the original stays, for
//!   display and phrase matching). A dotted path (`items.title`) collects every string under that
//!   key through arrays and objects, into `items_title_tokens`. A null or absent source gives a
//!   null / no token field.
//! * [`PinyinFields`] adds `<field>_pinyin` (`张三` → `zhang san`, toneless, one word per
//!   character; latin letters and digits kept as lowercase words) and `<field>_initials` (`zs`).
//!   A character with several readings gets its most common one, so a surname like 曾 (zeng)
//!   may be indexed under its ordinary reading (ceng).
//!
//! One [`Tokenizer`] is built at start (≈150 ms, ≈32 MB for the dictionary) and shared through
//! an `Arc`: jieba's segmenter is read-only after loading and `Send + Sync`.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use jieba_rs::Jieba;
use pinyin::ToPinyin;
use serde_json::{Map, Value as Json};

use crate::transform::{FieldTransform, TransformError};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read the user dictionary {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("user dictionary {path} is not valid (one `word [frequency] [tag]` per line): {reason}")]
    Invalid { path: String, reason: String },
}

/// jieba with the default dictionary plus an optional user dictionary.
pub struct Tokenizer {
    jieba: Jieba,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizer")
    }
}

impl Tokenizer {
    /// Loads the default dictionary and, when given, the user dictionary at `user_dict`.
    pub fn load(user_dict: Option<&Path>) -> Result<Self, TokenizerError> {
        let mut jieba = Jieba::new();
        if let Some(path) = user_dict {
            let file = std::fs::File::open(path).map_err(|source| TokenizerError::Read {
                path: path.display().to_string(),
                source,
            })?;
            jieba
                .load_dict(&mut BufReader::new(file))
                .map_err(|e| TokenizerError::Invalid {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
        }
        Ok(Tokenizer { jieba })
    }

    /// Search-mode words of `text`, lowercased and joined by spaces (see the module doc).
    pub fn tokens(&self, text: &str) -> String {
        let mut out = String::new();
        self.push_tokens(text, &mut out);
        out
    }

    /// [`Tokenizer::tokens`] appended to `out`, after a space if `out` holds words already.
    fn push_tokens(&self, text: &str, out: &mut String) {
        push_words(self.jieba.cut_for_search(text, true).iter().map(|t| t.word), out);
    }

    /// Precise-mode words of a query, lowercased: each is also a search-mode word of any
    /// document text containing the query.
    pub fn query_tokens(&self, text: &str) -> Vec<String> {
        let mut joined = String::new();
        push_words(self.jieba.cut(text, true).iter().map(|t| t.word), &mut joined);
        joined
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// Appends the searchable `words`, lowercased, to `out`, separated by single spaces (and by one
/// from what `out` holds already; nothing is added for a text without words).
fn push_words<'a>(words: impl Iterator<Item = &'a str>, out: &mut String) {
    for w in words {
        // Only words that carry a letter, digit or ideograph are searchable.
        if !w.chars().any(char::is_alphanumeric) {
            continue;
        }
        for part in w.split_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            for c in part.chars() {
                // Fast paths (same result): ASCII, and CJK ideographs, which have no case.
                if c.is_ascii() {
                    out.push(c.to_ascii_lowercase());
                } else if ('\u{4e00}'..='\u{9fff}').contains(&c) {
                    out.push(c);
                } else {
                    out.extend(c.to_lowercase());
                }
            }
        }
    }
}

/// Toneless pinyin words and their initials: `张三` → (`zhang san`, `zs`).
pub fn pinyin(text: &str) -> (String, String) {
    let mut words: Vec<String> = Vec::new();
    let mut latin = String::new();
    for (c, p) in text.chars().zip(text.to_pinyin()) {
        if c.is_ascii_alphanumeric() {
            latin.push(c.to_ascii_lowercase());
            continue;
        }
        if !latin.is_empty() {
            words.push(std::mem::take(&mut latin));
        }
        if let Some(p) = p {
            words.push(p.plain().to_string());
        }
    }
    if !latin.is_empty() {
        words.push(latin);
    }
    let initials = words.iter().filter_map(|w| w.chars().next()).collect();
    (words.join(" "), initials)
}

/// Adds `<field>_tokens` for each configured field or dotted path.
pub(crate) struct TokenFields {
    pub(crate) tokenizer: Arc<Tokenizer>,
    /// (path into the document, output field)
    pub(crate) fields: Vec<(Vec<String>, String)>,
}

impl TokenFields {
    pub(crate) fn new(tokenizer: Arc<Tokenizer>, paths: &[String]) -> Self {
        let fields = paths
            .iter()
            .map(|p| {
                let path: Vec<String> = p.split('.').map(str::to_string).collect();
                (path, format!("{}_tokens", p.replace('.', "_")))
            })
            .collect();
        TokenFields { tokenizer, fields }
    }
}

fn collect_strings<'a>(value: &'a Json, path: &[String], out: &mut Vec<&'a str>) {
    match (value, path.split_first()) {
        (Json::Array(items), _) => items.iter().for_each(|v| collect_strings(v, path, out)),
        (Json::String(s), None) => out.push(s),
        (Json::Object(map), Some((key, rest))) => {
            if let Some(v) = map.get(key) {
                collect_strings(v, rest, out);
            }
        }
        _ => {}
    }
}

impl FieldTransform for TokenFields {
    fn apply(&self, doc: &mut Map<String, Json>) -> Result<(), TransformError> {
        for (path, out) in &self.fields {
            let Some(root) = doc.get(&path[0]) else {
                continue;
            };
            let tokens = if root.is_null() {
                Json::Null
            } else {
                let mut texts = Vec::new();
                collect_strings(root, &path[1..], &mut texts);
                // The words of every text, joined by spaces.
                let mut joined = String::new();
                for t in texts {
                    self.tokenizer.push_tokens(t, &mut joined);
                }
                Json::String(joined)
            };
            doc.insert(out.clone(), tokens);
        }
        Ok(())
    }
}

/// Adds `<field>_pinyin` and `<field>_initials` for each configured field.
pub(crate) struct PinyinFields {
    pub(crate) fields: Vec<String>,
}

impl FieldTransform for PinyinFields {
    fn apply(&self, doc: &mut Map<String, Json>) -> Result<(), TransformError> {
        for f in &self.fields {
            let (words, initials) = match doc.get(f) {
                None => continue,
                Some(Json::String(s)) => {
                    let (w, i) = pinyin(s);
                    (Json::String(w), Json::String(i))
                }
                Some(_) => (Json::Null, Json::Null),
            };
            doc.insert(format!("{f}_pinyin"), words);
            doc.insert(format!("{f}_initials"), initials);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::OnceLock;

    fn shared() -> Arc<Tokenizer> {
        static T: OnceLock<Arc<Tokenizer>> = OnceLock::new();
        T.get_or_init(|| {
            let dict = Path::new(env!("CARGO_MANIFEST_DIR")).join("dict/shop.dict");
            Arc::new(Tokenizer::load(Some(&dict)).unwrap())
        })
        .clone()
    }

    #[test]
    fn lowercasing_fast_paths_match_unicode_lowercase() {
        let text = "ÀÉ БΣ 张三ABC 𠮷Ⅰǅ ＡＢ İ 一龥";
        let expected: String = text.chars().flat_map(char::to_lowercase).collect();
        let mut joined = String::new();
        push_words(text.split(' '), &mut joined);
        assert_eq!(joined, expected);
    }

    #[test]
    fn pinyin_and_initials() {
        assert_eq!(pinyin("张三"), ("zhang san".into(), "zs".into()));
        assert_eq!(pinyin("欧阳 Tom2"), ("ou yang tom2".into(), "oyt".into()));
        assert_eq!(pinyin("买买提·艾力"), ("mai mai ti ai li".into(), "mmtal".into()));
        // A character without a reading (𠮷 is outside the table) is skipped.
        assert_eq!(pinyin("王𠮷").1, "w");
    }

    #[test]
    fn tokens_are_lowercase_words_and_user_dictionary_words_stay_whole() {
        let t = shared();
        let tokens = t.tokens("浙江省杭州市西湖区文三路123号 Apple iPhone，请尽快发货！");
        let words: Vec<&str> = tokens.split(' ').collect();
        for w in ["文三路", "杭州", "西湖区", "apple", "iphone", "123"] {
            assert!(words.contains(&w), "{w} missing from {tokens}");
        }
        assert!(
            !words.iter().any(|w| w.is_empty() || w.contains(['，', '！'])),
            "{tokens}"
        );
        // Every precise-mode query word is among the search-mode document words.
        for q in t.query_tokens("文三路 杭州") {
            assert!(words.contains(&q.as_str()), "{q} missing from {tokens}");
        }
    }

    #[test]
    fn token_fields_follow_paths_and_keep_originals() {
        let tf = TokenFields::new(shared(), &["address".into(), "items.title".into(), "remark".into()]);
        let mut doc = json!({"address": "文三路", "remark": null,
            "items": [{"title": "——"}, {"title": "华为 Mate"}, {"title": "！"}, {"title": "小米"}]})
        .as_object()
        .unwrap()
        .clone();
        tf.apply(&mut doc).unwrap();
        assert_eq!(doc["address"], "文三路");
        // Search mode adds the dictionary word's known sub-words.
        assert_eq!(doc["address_tokens"], "三路 文三路");
        // Texts without words add no separator.
        assert_eq!(doc["items_title_tokens"], "华为 mate 小米");
        assert_eq!(doc["remark_tokens"], Json::Null);
    }

    /// Throughput of the derived search fields on sample orders (`cargo test --release --lib
    /// tokenize_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn tokenize_speed() {
        let started = std::time::Instant::now();
        let t = Arc::new(Tokenizer::load(Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("dict/shop.dict"))).unwrap());
        let load = started.elapsed();
        let sample = crate::testkit::sample::Sample::generate(1, 10_000);
        let tf = TokenFields::new(
            t,
            &[
                "buyer_name".into(),
                "address".into(),
                "remark".into(),
                "items.title".into(),
            ],
        );
        let py = PinyinFields {
            fields: vec!["buyer_name".into()],
        };
        let docs: Vec<Map<String, Json>> = sample
            .orders
            .iter()
            .map(|o| json!({"buyer_name": o.buyer_name, "address": o.address, "remark": o.remark, "items": o.items}))
            .map(|v| v.as_object().unwrap().clone())
            .collect();
        let chars: usize = docs
            .iter()
            .map(|d| Json::Object(d.clone()).to_string().chars().count())
            .sum();
        let started = std::time::Instant::now();
        for mut d in docs {
            tf.apply(&mut d).unwrap();
            py.apply(&mut d).unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "jieba load {:.0} ms; 10,000 orders tokenized in {:.2} s ({:.0} orders/s, {:.1} MB/s of text)",
            load.as_secs_f64() * 1000.0,
            secs,
            10_000.0 / secs,
            chars as f64 * 3.0 / secs / 1e6
        );
    }

    #[test]
    fn pinyin_fields_add_two_fields() {
        let mut doc = json!({"buyer_name": "张三"}).as_object().unwrap().clone();
        PinyinFields {
            fields: vec!["buyer_name".into(), "absent".into()],
        }
        .apply(&mut doc)
        .unwrap();
        assert_eq!(
            Json::Object(doc),
            json!({"buyer_name": "张三", "buyer_name_pinyin": "zhang san", "buyer_name_initials": "zs"})
        );
    }
}
