//! YAML as a positioned node tree, and a serde `Deserializer` over it that reports every
//! problem in a document (unknown keys with a did-you-mean, wrong types, bad enum values,
//! duplicate keys) instead of stopping at the first one.
//!
//! Parsing uses serde-saphyr's parser (`serde_saphyr::granit_parser`). Typed structs keep
//! positions through [`Spanned`] values and `$pos` fields ([`Loc`]), so later semantic checks
//! can point at the exact line and column. Type rules follow the YAML 1.2 core schema, with
//! Kubernetes' leniency: `null` is the same as absent, and any scalar can be read as a string.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

use super::diag::{Diagnostics, Pos, did_you_mean};

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    /// Where the node ends (exclusive), for "is this inside that" questions.
    pub end: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted, not block) scalars are typed by the core schema; others are strings.
    pub plain: bool,
}

static NULL_NODE: Node = Node {
    pos: Pos::new(0, 0),
    end: Pos::new(0, 0),
    value: Value::Scalar(Scalar { text: String::new(), plain: true }),
};

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) if !(s.plain && is_null(&s.text)) => Some(&s.text),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s) if s.plain && is_null(&s.text))
    }

    /// Every node's extent (start → end), for mapping a diagnostic position to its node.
    pub fn extents(&self, out: &mut HashMap<Pos, Pos>) {
        let e = out.entry(self.pos).or_insert(self.end);
        *e = (*e).max(self.end);
        match &self.value {
            Value::Scalar(_) => {}
            Value::Seq(items) => items.iter().for_each(|n| n.extents(out)),
            Value::Map(entries) => entries.iter().for_each(|(k, v)| {
                k.extents(out);
                v.extents(out);
            }),
        }
    }

    /// A short description for error messages: "a mapping", "the string `abc`", "null".
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Seq(_) => "a sequence".into(),
            Value::Map(_) => "a mapping".into(),
            Value::Scalar(s) if s.plain && is_null(&s.text) => "null".into(),
            Value::Scalar(s) if s.plain => format!("`{}`", shorten(&s.text)),
            Value::Scalar(s) => format!("the string \"{}\"", shorten(&s.text)),
        }
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s.to_string() }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn parse_int(text: &str) -> Option<i128> {
    let (neg, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let v = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    let looks_numeric = text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric { text.parse().ok() } else { None }
}

/// A YAML syntax error, which ends parsing of the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

fn pos_of(span: &Span) -> Pos {
    Pos::new(span.start.line() as u32, span.start.col() as u32 + 1)
}

fn end_of(span: &Span) -> Pos {
    Pos::new(span.end.line() as u32, span.end.col() as u32 + 1)
}

enum Frame {
    Seq { pos: Pos, anchor: usize, items: Vec<Node>, start: usize, height: usize },
    Map { pos: Pos, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node>, start: usize, height: usize },
}

/// The most YAML text read as one stream (the admin API's request limit too).
pub const MAX_INPUT_BYTES: usize = 32 * 1024 * 1024;
/// The most nodes one stream may hold once aliases are expanded: a "billion laughs" file of a
/// few hundred bytes expands past it at once and is refused before the copies are made. A
/// 1000-service / 5000-route configuration is about 130,000.
pub const MAX_NODES: usize = 1_000_000;
/// The deepest nesting of sequences and mappings (serde-saphyr's own default budget).
pub const MAX_DEPTH: usize = 64;

/// Parses a (multi-document) YAML stream. Empty documents are dropped. On a syntax error, or
/// when the stream is over a limit ([`MAX_INPUT_BYTES`], [`MAX_NODES`] with aliases expanded,
/// [`MAX_DEPTH`]), the documents before it are returned with the error at its position.
pub fn parse_stream(text: &str) -> (Vec<Node>, Option<SyntaxError>) {
    let mut docs = Vec::new();
    if text.len() > MAX_INPUT_BYTES {
        let message = format!(
            "the YAML is {:.1} MiB, over devmesh's limit of {} MiB",
            text.len() as f64 / (1024.0 * 1024.0),
            MAX_INPUT_BYTES >> 20
        );
        return (docs, Some(SyntaxError { pos: Pos::new(1, 1), message }));
    }
    let mut stack: Vec<Frame> = Vec::new();
    // Each anchor's node and its size in nodes (what an alias to it adds).
    // Each anchor's node, its size in nodes (what an alias to it adds) and its height (an
    // alias nests it where it stands: nesting is checked with aliases expanded too).
    let mut anchors: HashMap<usize, (Node, usize, usize)> = HashMap::new();
    let mut root: Option<Node> = None;
    // Nodes so far, aliases counted at their expanded size.
    let mut total: usize = 0;
    let over = |pos: Pos, what: &str| SyntaxError {
        pos,
        message: format!("{what}; refused (a YAML bomb's aliases, or a document far larger than any configuration)"),
    };
    for item in Parser::new_from_str(text) {
        let (event, span) = match item {
            Ok(ev) => ev,
            Err(e) => {
                let m = e.marker();
                let pos = Pos::new(m.line() as u32, m.col() as u32 + 1);
                return (docs, Some(SyntaxError { pos, message: e.info().to_string() }));
            }
        };
        // The finished node, its anchor, its size and its height.
        let done: Option<(Node, usize, usize, usize)> = match event {
            Event::DocumentStart(..) => {
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take().filter(|n| !n.is_null()) {
                    docs.push(node);
                }
                None
            }
            Event::Scalar(text, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix() == "str");
                let plain = style == ScalarStyle::Plain && !forced_str;
                let node = Node {
                    pos: pos_of(&span),
                    end: end_of(&span),
                    value: Value::Scalar(Scalar { text: text.into_owned(), plain }),
                };
                total += 1;
                Some((node, anchor, 1, 1))
            }
            Event::Alias(id) => {
                let (size, height) = anchors.get(&id).map(|(_, n, h)| (*n, *h)).unwrap_or((1, 1));
                if stack.len() + height > MAX_DEPTH {
                    let msg = format!("an alias nests this YAML more than {MAX_DEPTH} levels deep");
                    return (docs, Some(over(pos_of(&span), &msg)));
                }
                total = total.saturating_add(size);
                if total > MAX_NODES {
                    let msg = format!("aliases expand this YAML past {MAX_NODES} nodes");
                    return (docs, Some(over(pos_of(&span), &msg)));
                }
                let mut node = anchors.get(&id).map(|(n, ..)| n.clone()).unwrap_or_else(|| NULL_NODE.clone());
                node.pos = pos_of(&span);
                node.end = end_of(&span);
                Some((node, 0, size, height))
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if stack.len() >= MAX_DEPTH => {
                return (docs, Some(over(pos_of(&span), &format!("nested more than {MAX_DEPTH} levels deep"))));
            }
            Event::SequenceStart(_, anchor, _) => {
                total += 1;
                stack.push(Frame::Seq { pos: pos_of(&span), anchor, items: Vec::new(), start: total, height: 0 });
                None
            }
            Event::MappingStart(_, anchor, _) => {
                total += 1;
                let map =
                    Frame::Map { pos: pos_of(&span), anchor, entries: Vec::new(), key: None, start: total, height: 0 };
                stack.push(map);
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { pos, anchor, items, start, height }) => {
                    let node = Node { pos, end: end_of(&span), value: Value::Seq(items) };
                    Some((node, anchor, total - start + 1, height + 1))
                }
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map { pos, anchor, entries, start, height, .. }) => Some((
                    Node { pos, end: end_of(&span), value: Value::Map(merge_keys(entries)) },
                    anchor,
                    total - start + 1,
                    height + 1,
                )),
                _ => None,
            },
            _ => None,
        };
        if total > MAX_NODES {
            return (docs, Some(over(pos_of(&span), &format!("this YAML has more than {MAX_NODES} nodes"))));
        }
        if let Some((node, anchor, size, h)) = done {
            if anchor != 0 {
                anchors.insert(anchor, (node.clone(), size, h));
            }
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq { items, height, .. }) => {
                    *height = (*height).max(h);
                    items.push(node)
                }
                Some(Frame::Map { entries, key, height, .. }) => match key.take() {
                    None => {
                        *height = (*height).max(h);
                        *key = Some(node)
                    }
                    Some(k) => {
                        *height = (*height).max(h);
                        entries.push((k, node))
                    }
                },
            }
        }
    }
    (docs, None)
}

/// Applies `<<` merge keys (as Kubernetes' YAML reader does): merged entries never override
/// keys written in the mapping itself.
fn merge_keys(entries: Vec<(Node, Node)>) -> Vec<(Node, Node)> {
    if !entries.iter().any(|(k, _)| is_merge_key(k)) {
        return entries;
    }
    let (merges, mut own): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(k, _)| is_merge_key(k));
    for (_, value) in merges {
        let sources: Vec<Node> = match value.value {
            Value::Seq(items) => items,
            other => vec![Node { pos: value.pos, end: value.end, value: other }],
        };
        for src in sources {
            if let Value::Map(src_entries) = src.value {
                for (k, v) in src_entries {
                    if !own.iter().any(|(ok, _)| ok.as_str() == k.as_str()) {
                        own.push((k, v));
                    }
                }
            }
        }
    }
    own
}

fn is_merge_key(k: &Node) -> bool {
    matches!(&k.value, Value::Scalar(s) if s.plain && s.text == "<<")
}

// ---------------------------------------------------------------------------------------------
// Position-carrying wrappers.

const SPANNED: &str = "$devmesh::Spanned";
const SPANNED_FIELDS: &[&str] = &["$line", "$col", "$value"];

/// A value with the position it was read from. Equality, ordering and hashing look at the
/// value only, so re-reading an unchanged file yields equal resources.
#[derive(Clone, Debug, Default)]
pub struct Spanned<T> {
    pub pos: Pos,
    pub value: T,
}

impl<T> Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<T: Eq> Eq for Spanned<T> {}
impl<T: std::hash::Hash> std::hash::Hash for Spanned<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state)
    }
}
impl<T: PartialOrd> PartialOrd for Spanned<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.value.partial_cmp(&other.value)
    }
}
impl<T: Ord> Ord for Spanned<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}

impl<T: Serialize> Serialize for Spanned<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let _: Option<de::IgnoredAny> = map.next_key()?;
                let line: u32 = map.next_value()?;
                let _: Option<de::IgnoredAny> = map.next_key()?;
                let col: u32 = map.next_value()?;
                let _: Option<de::IgnoredAny> = map.next_key()?;
                let value: T = map.next_value()?;
                Ok(Spanned { pos: Pos::new(line, col), value })
            }
        }
        d.deserialize_struct(SPANNED, SPANNED_FIELDS, V(std::marker::PhantomData))
    }
}

/// The position of the mapping a struct was read from: declare a field
/// `#[serde(rename = "$pos", default, skip_serializing)] pub at: Loc`.
/// Always compares equal, so it never makes two resources differ.
#[derive(Clone, Copy, Debug, Default)]
pub struct Loc(pub Pos);

impl PartialEq for Loc {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<'de> Deserialize<'de> for Loc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Pos::deserialize(d).map(Loc)
    }
}

/// A mapping that keeps the file's order of keys.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderedMap<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for OrderedMap<K, V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<K, V> OrderedMap<K, V> {
    pub fn iter(&self) -> impl Iterator<Item = &(K, V)> {
        self.0.iter()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for Vis<K, V> {
            type Value = OrderedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key()? {
                    out.push((k, map.next_value()?));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

impl<K: Serialize, V: Serialize> Serialize for OrderedMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

// ---------------------------------------------------------------------------------------------
// The deserializer.

#[derive(Debug)]
pub enum DeError {
    /// Already recorded as a diagnostic.
    Reported,
    Custom(String),
    Missing(&'static str),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::Reported => f.write_str("invalid document"),
            DeError::Custom(m) => f.write_str(m),
            DeError::Missing(field) => write!(f, "missing field `{field}`"),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Custom(msg.to_string())
    }
    fn missing_field(field: &'static str) -> Self {
        DeError::Missing(field)
    }
}

/// Shared state of one deserialization: where diagnostics go.
struct Cx {
    file: Arc<str>,
    diags: RefCell<Diagnostics>,
    errors: Cell<usize>,
    quiet: Cell<u32>,
}

impl Cx {
    fn error(&self, pos: Pos, msg: String) {
        if self.quiet.get() == 0 {
            self.errors.set(self.errors.get() + 1);
            self.diags.borrow_mut().error(&self.file, pos, msg);
        }
    }
}

/// Deserializes `node` into `T`, recording every problem in `diags`. Returns `None` when any
/// error was found.
pub fn from_node<'a, T: Deserialize<'a>>(node: &'a Node, file: &Arc<str>, diags: &mut Diagnostics) -> Option<T> {
    match from_node_lenient(node, file, diags) {
        (Some(v), false) => Some(v),
        _ => None,
    }
}

/// Like [`from_node`], but also returns the value when there were errors (fields in error hold
/// placeholders), so later checks can still report their own findings. The flag says whether
/// errors were found.
pub fn from_node_lenient<'a, T: Deserialize<'a>>(
    node: &'a Node,
    file: &Arc<str>,
    diags: &mut Diagnostics,
) -> (Option<T>, bool) {
    let cx =
        Cx { file: file.clone(), diags: RefCell::new(Diagnostics::new()), errors: Cell::new(0), quiet: Cell::new(0) };
    let result = T::deserialize(NodeDe { node, cx: &cx, key: false });
    let value = match result {
        Ok(v) => Some(v),
        Err(e) => {
            NodeDe { node, cx: &cx, key: false }.report(e);
            None
        }
    };
    let failed = cx.errors.get() > 0;
    diags.extend(cx.diags.into_inner());
    (value, failed)
}

#[derive(Clone, Copy)]
struct NodeDe<'a, 'c> {
    node: &'a Node,
    cx: &'c Cx,
    /// Map keys are read leniently: `"80": x` may fill an integer key.
    key: bool,
}

impl<'a, 'c> NodeDe<'a, 'c> {
    fn report(&self, e: DeError) -> DeError {
        match e {
            DeError::Reported => {}
            DeError::Custom(m) => self.cx.error(self.node.pos, m),
            DeError::Missing(f) => self.cx.error(self.node.pos, format!("missing field `{f}`")),
        }
        DeError::Reported
    }

    fn mismatch(&self, expected: &str) {
        self.cx.error(self.node.pos, format!("expected {expected}, found {}", self.node.describe()));
    }

    fn typed_scalar(&self) -> Option<&'a str> {
        match &self.node.value {
            Value::Scalar(s) if s.plain || self.key => Some(&s.text),
            _ => None,
        }
    }

    fn int(&self, min: i128, max: i128) -> i128 {
        match self.typed_scalar().and_then(parse_int) {
            Some(v) if v >= min && v <= max => v,
            Some(v) => {
                self.cx.error(self.node.pos, format!("number {v} is out of range {min}..={max}"));
                0
            }
            None => {
                self.mismatch("an integer");
                0
            }
        }
    }

    fn with<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| self.report(e))
    }

    fn empty_map(&self) -> &'a [(Node, Node)] {
        &[]
    }
}

macro_rules! de_int {
    ($name:ident, $ty:ty, $visit:ident, $as:ty) => {
        fn $name<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let n = self.int(<$ty>::MIN as i128, <$ty>::MAX as i128);
            self.with(v.$visit(n as $as))
        }
    };
}

impl<'de, 'a: 'de, 'c> Deserializer<'de> for NodeDe<'a, 'c> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Scalar(s) if s.plain => {
                if is_null(&s.text) {
                    v.visit_unit()
                } else if let Some(b) = parse_bool(&s.text) {
                    v.visit_bool(b)
                } else if let Some(i) = parse_int(&s.text) {
                    if let Ok(u) = u64::try_from(i) {
                        v.visit_u64(u)
                    } else if let Ok(i) = i64::try_from(i) {
                        v.visit_i64(i)
                    } else {
                        v.visit_str(&s.text)
                    }
                } else if let Some(f) = parse_float(&s.text) {
                    v.visit_f64(f)
                } else {
                    v.visit_str(&s.text)
                }
            }
            Value::Scalar(s) => v.visit_str(&s.text),
            Value::Seq(items) => v.visit_seq(SeqDe { items: items.iter(), cx: self.cx }),
            Value::Map(entries) => v.visit_map(MapDe::new(entries, self.cx)),
        };
        self.with(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let b = match self.typed_scalar().and_then(parse_bool) {
            Some(b) => b,
            None => {
                self.mismatch("a boolean (true or false)");
                false
            }
        };
        self.with(v.visit_bool(b))
    }

    de_int!(deserialize_i8, i8, visit_i64, i64);
    de_int!(deserialize_i16, i16, visit_i64, i64);
    de_int!(deserialize_i32, i32, visit_i64, i64);
    de_int!(deserialize_i64, i64, visit_i64, i64);
    de_int!(deserialize_u8, u8, visit_u64, u64);
    de_int!(deserialize_u16, u16, visit_u64, u64);
    de_int!(deserialize_u32, u32, visit_u64, u64);
    de_int!(deserialize_u64, u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let f = match self.typed_scalar().and_then(|t| parse_int(t).map(|i| i as f64).or_else(|| parse_float(t))) {
            Some(f) => f,
            None => {
                self.mismatch("a number");
                0.0
            }
        };
        self.with(v.visit_f64(f))
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let text = match &self.node.value {
            Value::Scalar(s) => s.text.as_str(),
            _ => {
                self.mismatch("a string");
                ""
            }
        };
        self.with(v.visit_str(text))
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() { self.with(v.visit_none()) } else { v.visit_some(self) }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if !self.node.is_null() {
            self.mismatch("null");
        }
        self.with(v.visit_unit())
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let items: &'a [Node] = match &self.node.value {
            Value::Seq(items) => items,
            _ => {
                if !self.node.is_null() {
                    self.mismatch("a sequence");
                }
                &[]
            }
        };
        self.with(v.visit_seq(SeqDe { items: items.iter(), cx: self.cx }))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let entries = match &self.node.value {
            Value::Map(entries) => entries.as_slice(),
            _ => {
                if !self.node.is_null() {
                    self.mismatch("a mapping");
                }
                self.empty_map()
            }
        };
        self.with(v.visit_map(MapDe::new(entries, self.cx)))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        if name == SPANNED {
            return v.visit_map(SpannedAccess { node: self.node, cx: self.cx, step: 0 });
        }
        let entries = match &self.node.value {
            Value::Map(entries) => entries.as_slice(),
            _ => {
                if !self.node.is_null() {
                    self.mismatch("a mapping");
                }
                self.empty_map()
            }
        };
        let access = StructAccess {
            entries: entries.iter(),
            fields,
            cx: self.cx,
            pos: fields.contains(&"$pos").then_some(self.node.pos),
            value: None,
            seen: Vec::new(),
        };
        self.with(v.visit_map(access))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let expected = || variants.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ");
        let chosen: Option<(&'a str, Option<&'a Node>)> = match &self.node.value {
            Value::Scalar(s) if !self.node.is_null() => {
                if variants.contains(&s.text.as_str()) {
                    Some((&s.text, None))
                } else {
                    let hint = did_you_mean(&s.text, variants.iter().copied())
                        .map(|c| format!(" (did you mean `{c}`?)"))
                        .unwrap_or_default();
                    self.cx.error(
                        self.node.pos,
                        format!("unknown value `{}`{hint}; expected one of {}", s.text, expected()),
                    );
                    None
                }
            }
            Value::Map(entries) if entries.len() == 1 => {
                let (k, val) = &entries[0];
                match k.as_str() {
                    Some(name) if variants.contains(&name) => Some((name, Some(val))),
                    Some(name) => {
                        let hint = did_you_mean(name, variants.iter().copied())
                            .map(|c| format!(" (did you mean `{c}`?)"))
                            .unwrap_or_default();
                        self.cx.error(k.pos, format!("unknown field `{name}`{hint}; expected one of {}", expected()));
                        None
                    }
                    None => {
                        self.mismatch(&format!("one of {}", expected()));
                        None
                    }
                }
            }
            Value::Map(entries) => {
                self.cx.error(
                    self.node.pos,
                    format!("expected exactly one of {}, found {} keys", expected(), entries.len()),
                );
                None
            }
            _ => {
                self.mismatch(&format!("one of {}", expected()));
                None
            }
        };
        match chosen {
            Some((name, value)) => self.with(v.visit_enum(EnumDe { name, value, cx: self.cx })),
            None => {
                // Continue with a placeholder so sibling fields are still checked.
                let name = variants.first().copied().unwrap_or("");
                self.cx.quiet.set(self.cx.quiet.get() + 1);
                let r = v.visit_enum(EnumDe { name, value: Some(&NULL_NODE), cx: self.cx });
                self.cx.quiet.set(self.cx.quiet.get() - 1);
                r.map_err(|_| DeError::Reported)
            }
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
}

struct SeqDe<'a, 'c> {
    items: std::slice::Iter<'a, Node>,
    cx: &'c Cx,
}

impl<'de, 'a: 'de, 'c> de::SeqAccess<'de> for SeqDe<'a, 'c> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed.deserialize(NodeDe { node, cx: self.cx, key: false }).map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a, 'c> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    cx: &'c Cx,
    value: Option<&'a Node>,
    seen: Vec<&'a str>,
}

impl<'a, 'c> MapDe<'a, 'c> {
    fn new(entries: &'a [(Node, Node)], cx: &'c Cx) -> Self {
        MapDe { entries: entries.iter(), cx, value: None, seen: Vec::new() }
    }
}

impl<'de, 'a: 'de, 'c> de::MapAccess<'de> for MapDe<'a, 'c> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        for (k, v) in self.entries.by_ref() {
            if let Some(text) = k.as_str() {
                if self.seen.contains(&text) {
                    self.cx.error(k.pos, format!("duplicate key `{text}`"));
                    continue;
                }
                self.seen.push(text);
            }
            self.value = Some(v);
            return seed.deserialize(NodeDe { node: k, cx: self.cx, key: true }).map(Some);
        }
        Ok(None)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let node = self.value.take().unwrap_or(&NULL_NODE);
        seed.deserialize(NodeDe { node, cx: self.cx, key: false })
    }
}

struct StructAccess<'a, 'c> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    fields: &'static [&'static str],
    cx: &'c Cx,
    /// Pending `$pos` injection.
    pos: Option<Pos>,
    value: Option<&'a Node>,
    seen: Vec<&'a str>,
}

impl<'de, 'a: 'de, 'c> de::MapAccess<'de> for StructAccess<'a, 'c> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        if self.pos.is_some() {
            return seed.deserialize("$pos".into_deserializer()).map(Some);
        }
        for (k, v) in self.entries.by_ref() {
            let Some(text) = k.as_str() else {
                self.cx.error(k.pos, format!("expected a field name, found {}", k.describe()));
                continue;
            };
            if !self.fields.contains(&text) || text.starts_with('$') {
                let hint = did_you_mean(text, self.fields.iter().copied())
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_else(|| {
                        let known: Vec<String> =
                            self.fields.iter().filter(|f| !f.starts_with('$')).map(|f| format!("`{f}`")).collect();
                        format!("; expected one of {}", known.join(", "))
                    });
                self.cx.error(k.pos, format!("unknown field `{text}`{hint}"));
                continue;
            }
            if self.seen.contains(&text) {
                self.cx.error(k.pos, format!("duplicate key `{text}`"));
                continue;
            }
            self.seen.push(text);
            self.value = Some(v);
            return seed.deserialize(text.into_deserializer()).map(Some);
        }
        Ok(None)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        if let Some(pos) = self.pos.take() {
            let pairs = [("line", pos.line), ("col", pos.col)];
            return seed.deserialize(de::value::MapDeserializer::<_, DeError>::new(pairs.into_iter()));
        }
        let node = self.value.take().unwrap_or(&NULL_NODE);
        seed.deserialize(NodeDe { node, cx: self.cx, key: false })
    }
}

struct SpannedAccess<'a, 'c> {
    node: &'a Node,
    cx: &'c Cx,
    step: u8,
}

impl<'de, 'a: 'de, 'c> de::MapAccess<'de> for SpannedAccess<'a, 'c> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        match SPANNED_FIELDS.get(self.step as usize) {
            Some(name) => seed.deserialize((*name).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        self.step += 1;
        match self.step {
            1 => seed.deserialize(self.node.pos.line.into_deserializer()),
            2 => seed.deserialize(self.node.pos.col.into_deserializer()),
            _ => seed.deserialize(NodeDe { node: self.node, cx: self.cx, key: false }),
        }
    }
}

struct EnumDe<'a, 'c> {
    name: &'a str,
    value: Option<&'a Node>,
    cx: &'c Cx,
}

impl<'de, 'a: 'de, 'c> de::EnumAccess<'de> for EnumDe<'a, 'c> {
    type Error = DeError;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let v = seed.deserialize(self.name.into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de, 'a: 'de, 'c> de::VariantAccess<'de> for EnumDe<'a, 'c> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        if let Some(node) = self.value.filter(|n| !n.is_null()) {
            self.cx.error(node.pos, format!("`{}` takes no value", self.name));
        }
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        let node = self.value.unwrap_or(&NULL_NODE);
        seed.deserialize(NodeDe { node, cx: self.cx, key: false })
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        NodeDe { node: self.value.unwrap_or(&NULL_NODE), cx: self.cx, key: false }.deserialize_seq(v)
    }
    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value, DeError> {
        NodeDe { node: self.value.unwrap_or(&NULL_NODE), cx: self.cx, key: false }.deserialize_struct("", fields, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(rename = "$pos", default)]
        at: Loc,
        name: Option<Spanned<String>>,
        #[serde(default)]
        replicas: Option<u32>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        restart: Option<Restart>,
        #[serde(default)]
        check: Option<Check>,
        #[serde(default)]
        ports: Vec<Port>,
        #[serde(default)]
        enabled: Option<bool>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Restart {
        Always,
        OnFailure,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    enum Check {
        Http(String),
        Tcp(bool),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Port {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        port: Option<u16>,
    }

    fn run<T: for<'a> Deserialize<'a>>(text: &str) -> (Option<T>, String) {
        let (docs, err) = parse_stream(text);
        assert!(err.is_none(), "{err:?}");
        let file: Arc<str> = Arc::from("t.yaml");
        let mut diags = Diagnostics::new();
        let v = from_node(&docs[0], &file, &mut diags);
        (v, diags.render())
    }

    #[test]
    fn reads_values_with_positions() {
        let (v, d) = run::<Probe>(
            "name: web\nreplicas: 2\nlabels: {version: 1.0}\nrestart: on-failure\ncheck: {http: /health}\nports:\n  - {name: http, port: 80}\n",
        );
        assert_eq!(d, "");
        let v = v.unwrap();
        assert_eq!(v.name.as_ref().unwrap().pos, Pos::new(1, 7));
        assert_eq!(v.name.unwrap().value, "web");
        assert_eq!(v.replicas, Some(2));
        assert_eq!(v.labels["version"], "1.0");
        assert_eq!(v.restart, Some(Restart::OnFailure));
        assert_eq!(v.check, Some(Check::Http("/health".into())));
        assert_eq!(v.ports[0].port, Some(80));
        assert_eq!(v.at.0, Pos::new(1, 1));
    }

    #[test]
    fn reports_all_problems_not_just_the_first() {
        let text = "nmae: web\nreplicas: three\nrestart: sometimes\ncheck: {http: /a, tcp: true}\nports:\n  - {name: http, port: 70000, extra: 1}\nenabled: yes\n";
        let (v, d) = run::<Probe>(text);
        assert!(v.is_none());
        assert_eq!(
            d,
            "t.yaml:1:1: error: unknown field `nmae` (did you mean `name`?)\n\
             t.yaml:2:11: error: expected an integer, found `three`\n\
             t.yaml:3:10: error: unknown value `sometimes`; expected one of `always`, `on-failure`\n\
             t.yaml:4:8: error: expected exactly one of `http`, `tcp`, found 2 keys\n\
             t.yaml:6:24: error: number 70000 is out of range 0..=65535\n\
             t.yaml:6:31: error: unknown field `extra`; expected one of `name`, `port`\n\
             t.yaml:7:10: error: expected a boolean (true or false), found `yes`\n"
        );
    }

    #[test]
    fn quoted_numbers_are_strings_but_keys_are_lenient() {
        let (_, d) = run::<Port>("port: \"80\"\n");
        assert_eq!(d, "t.yaml:1:7: error: expected an integer, found the string \"80\"\n");
        let (v, d) = run::<BTreeMap<u16, u16>>("\"80\": 8080\n");
        assert_eq!(d, "");
        assert_eq!(v.unwrap()[&80], 8080);
    }

    #[test]
    fn duplicate_keys_and_nulls() {
        let (_, d) = run::<Probe>("name: a\nname: b\n");
        assert_eq!(d, "t.yaml:2:1: error: duplicate key `name`\n");
        let (v, d) = run::<Probe>("name:\nports:\nlabels: ~\n");
        assert_eq!(d, "");
        let v = v.unwrap();
        assert!(v.name.is_none() && v.ports.is_empty() && v.labels.is_empty());
    }

    #[test]
    fn multi_document_streams_anchors_and_merge_keys() {
        let text = "---\na: &x {k: 1}\nb: *x\nc:\n  <<: *x\n  j: 2\n---\n---\nsecond: true\n";
        let (docs, err) = parse_stream(text);
        assert!(err.is_none());
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].get("b").unwrap().get("k").unwrap().as_str(), Some("1"));
        assert_eq!(docs[0].get("c").unwrap().get("k").unwrap().as_str(), Some("1"));
        assert_eq!(docs[1].get("second").unwrap().pos, Pos::new(9, 9));
    }

    #[test]
    fn syntax_errors_are_located_and_keep_earlier_documents() {
        let (docs, err) = parse_stream("a: 1\n---\nb: [1, 2\nc: 3\n");
        assert_eq!(docs.len(), 1);
        let err = err.unwrap();
        assert_eq!(err.pos.line, 4);
    }

    /// `levels` anchors, each a list of ten aliases of the one before: 10^levels nodes.
    pub(crate) fn alias_bomb(levels: usize) -> String {
        let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for l in 1..levels {
            let p = format!("*a{}", l - 1);
            y.push_str(&format!("a{l}: &a{l} [{}]\n", vec![p; 10].join(", ")));
        }
        y
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        let bomb = alias_bomb(9);
        assert!(bomb.len() < 600, "{}", bomb.len());
        let t = std::time::Instant::now();
        let (docs, err) = parse_stream(&bomb);
        let err = err.expect("refused");
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(docs.is_empty());
        assert!(err.message.contains("aliases expand this YAML past 1000000 nodes"), "{}", err.message);
        // Line 6 (a5) holds 10^6 x with its aliases expanded.
        assert_eq!(err.pos.line, 6, "{err:?}");
        // Ordinary aliases are fine.
        let (docs, err) = parse_stream(&alias_bomb(4));
        assert!(err.is_none(), "{err:?}");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn deep_nesting_is_refused_with_and_without_aliases() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let (_, err) = parse_stream(&deep);
        assert!(err.expect("refused").message.contains("more than 64 levels deep"));
        let ok = format!("{}{}", "[".repeat(60), "]".repeat(60));
        assert!(parse_stream(&ok).1.is_none());
        // Each alias nests a 40-deep anchor inside the next: 40 + 40 > 64.
        let inner = format!("{}x{}", "[".repeat(40), "]".repeat(40));
        let y = format!("a: &a {inner}\nb: &b {}*a{}\n", "[".repeat(30), "]".repeat(30));
        let (_, err) = parse_stream(&y);
        assert!(err.expect("refused").message.contains("an alias nests this YAML"));
    }

    #[test]
    fn huge_input_is_refused_by_size() {
        let big = "k: v\n".repeat(MAX_INPUT_BYTES / 5 + 1);
        let (docs, err) = parse_stream(&big);
        assert!(docs.is_empty());
        assert!(err.expect("refused").message.contains("over devmesh's limit of 32 MiB"));
        // Under the size limit but over the node limit.
        let many = format!("[{}]", "1,".repeat(MAX_NODES + 5));
        let (_, err) = parse_stream(&many);
        assert!(err.expect("refused").message.contains("more than 1000000 nodes"));
    }
}
