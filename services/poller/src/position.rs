//! What a model's stored `position` means, read in one place ([`Position::parse`]) and written
//! by the functions below it.
//!
//! The state record (`<prefix>.poller.state`, `sluice_avro::PollerState`) keeps the position as
//! text, in the forms below, so state topics written by earlier versions keep working. What the
//! text means depends on the model's mode and on whether its first snapshot is done:
//!
//! | mode | first snapshot | stored text | [`Position`] |
//! |---|---|---|---|
//! | `cursor` | any | none | `Cursor`, from the start |
//! | `cursor` | any | `[{"t":"TimestampMicros","v":…}, …]`: the cursor tuple (written without a look-back window) | `Cursor`, no pairs |
//! | `cursor` | any | `{"cursor": [...] or null, "recent": [[key_hash, micros], …]}` (written with a window) | `Cursor` with the pairs |
//! | `diff` | not done | none, or the key tuple (`[…]`) of the last committed chunk | `SnapshotChunk` |
//! | `diff` | done | none (whatever another mode left is carried unchanged) | `None` |
//! | `warehouse_diff` | any | `{"emitted": n, "complete": bool}`, or none | `WarehouseDiff` |
//!
//! Both cursor loops read both cursor forms: a model switched from plain cursor mode to a
//! look-back window starts its window at the stored tuple; one switched back keeps the tuple and
//! drops the pairs (a plain cursor never reads behind its position, so it needs none). A form
//! another mode wrote, where this mode keeps no position (`diff` after its first snapshot,
//! `warehouse_diff` before its first run), is ignored, as it always was.
//!
//! Guarantee: text that is none of these forms, or a form this mode cannot continue from, is a
//! [`PositionError`] — fatal for the model (retrying cannot fix stored text), naming the model,
//! showing what was found and saying how to reset it. Nothing is guessed and no pending work is
//! dropped because of it.

use serde::{Deserialize, Serialize};
use sluice_core::config::Detection;
use sluice_core::Value;

/// What a model's stored position means (see the module doc for the stored forms).
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// Cursor mode, with or without a look-back window.
    Cursor(CursorPosition),
    /// `diff` mode during its first snapshot: the key tuple of the last committed chunk
    /// (`None`: no chunk committed yet).
    SnapshotChunk(Option<Vec<Value>>),
    /// `warehouse_diff` mode: the progress of the last run Kafka committed (`None`: no
    /// `warehouse_diff` run committed yet).
    WarehouseDiff(Option<RunProgress>),
    /// `diff` mode after its first snapshot: it keeps no position (the change topic is its state).
    None,
}

/// A cursor model's position: the cursor tuple and, with a look-back window, the (key hash,
/// cursor micros) pairs emitted inside the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorPosition {
    /// The cursor tuple (cursor column, then primary key) of the last row emitted; `None` before
    /// the first.
    pub cursor: Option<Vec<Value>>,
    /// Pairs emitted inside the window (empty without one).
    #[serde(default)]
    pub recent: Vec<(u64, i64)>,
}

impl CursorPosition {
    /// The stored form with a look-back window: `{"cursor": …, "recent": …}`.
    pub fn window_text(&self) -> String {
        serde_json::to_string(self).expect("values serialise")
    }
}

/// Progress of a `warehouse_diff` run, stored as the state record's `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunProgress {
    /// Changes of the run committed so far (the change list is numbered in key order).
    pub emitted: u64,
    /// Whether the run's last transaction committed (the snapshot may be swapped).
    pub complete: bool,
}

impl RunProgress {
    /// The stored form: `{"emitted": n, "complete": bool}`.
    pub fn text(&self) -> String {
        serde_json::to_string(self).expect("serialises")
    }
}

/// The stored form of a tuple: a cursor position without window, the last key of a first
/// snapshot chunk, and an event's `source.position` (`[{"t": "Long", "v": 7}, …]`).
pub fn tuple_text(tuple: &[Value]) -> String {
    serde_json::to_string(tuple).expect("values serialise")
}

/// A stored position that cannot be used: the model stops until an operator resets it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model {model}: its stored position cannot be used: {problem}. Found: {found}. Nothing was read or emitted. Fix: if the model's detection mode was just changed, change it back; otherwise reset the model's progress: produce a tombstone (a null value) with key \"{model}\" to the poller's state topic (<kafka.topic_prefix>.poller.state) and restart, and the model takes its first snapshot again (or give it new topics with a new kafka.topic_prefix)")]
pub struct PositionError {
    pub model: String,
    /// What is wrong with it.
    pub problem: String,
    /// The stored text (shortened), or "no position".
    pub found: String,
}

/// Longest part of a stored position an error shows (a look-back position can hold 20000 pairs).
const SHOWN_CHARS: usize = 200;

impl PositionError {
    /// `text` is the stored position, `None` when there is none.
    pub fn new(model: &str, text: Option<&str>, problem: impl Into<String>) -> PositionError {
        let found = match text {
            None => "no position".to_string(),
            Some(text) if text.chars().count() > SHOWN_CHARS => {
                format!("{:?}… ({} bytes)", text.chars().take(SHOWN_CHARS).collect::<String>(), text.len())
            }
            Some(text) => format!("{text:?}"),
        };
        PositionError { model: model.to_string(), problem: problem.into(), found }
    }
}

/// The stored forms, before the mode says what they mean.
enum Form {
    Tuple(Vec<Value>),
    Window(CursorPosition),
    Progress(RunProgress),
}

impl Form {
    fn read(text: &str) -> Result<Form, String> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("it is not JSON ({e})"))?;
        let form = match &json {
            serde_json::Value::Array(_) => {
                let tuple: Vec<Value> =
                    serde_json::from_value(json).map_err(|e| format!("it is a JSON array but not a tuple of tagged values ({e})"))?;
                if tuple.is_empty() {
                    return Err("the tuple is empty".to_string());
                }
                Form::Tuple(tuple)
            }
            serde_json::Value::Object(object) if object.contains_key("emitted") || object.contains_key("complete") => Form::Progress(
                serde_json::from_value(json).map_err(|e| format!("it looks like a warehouse_diff progress but does not parse ({e})"))?,
            ),
            serde_json::Value::Object(_) => {
                let window: CursorPosition =
                    serde_json::from_value(json).map_err(|e| format!("it looks like a look-back position but does not parse ({e})"))?;
                if window.cursor.as_ref().is_some_and(Vec::is_empty) {
                    return Err("the cursor tuple is empty".to_string());
                }
                Form::Window(window)
            }
            _ => return Err("it is neither a JSON array (a tuple) nor an object".to_string()),
        };
        Ok(form)
    }

    fn name(&self) -> &'static str {
        match self {
            Form::Tuple(_) => "a tuple",
            Form::Window(_) => "a look-back position",
            Form::Progress(_) => "a warehouse_diff progress",
        }
    }
}

impl Position {
    /// What `text` (the state record's `position`) means for a model of `model`'s `detection`
    /// whose first snapshot is (`snapshot_done`) or is not complete. The one place a stored
    /// position is read.
    pub fn parse(model: &str, detection: &Detection, snapshot_done: bool, text: Option<&str>) -> Result<Position, PositionError> {
        let Some(stored) = text else {
            return Ok(match (detection, snapshot_done) {
                (Detection::Cursor { .. }, _) => Position::Cursor(CursorPosition::default()),
                (Detection::Diff {}, false) => Position::SnapshotChunk(None),
                (Detection::Diff {}, true) => Position::None,
                (Detection::WarehouseDiff {}, _) => Position::WarehouseDiff(None),
            });
        };
        let form = Form::read(stored).map_err(|problem| PositionError::new(model, text, problem))?;
        let wrong = |expected: &str, form: &Form| {
            PositionError::new(model, text, format!("{expected}, but this is {}", form.name()))
        };
        Ok(match (detection, snapshot_done, form) {
            (Detection::Cursor { .. }, _, Form::Tuple(cursor)) => Position::Cursor(CursorPosition { cursor: Some(cursor), recent: Vec::new() }),
            (Detection::Cursor { .. }, _, Form::Window(window)) => Position::Cursor(window),
            (Detection::Cursor { .. }, _, form) => {
                return Err(wrong("cursor mode continues from a cursor tuple or a look-back position", &form))
            }
            (Detection::Diff {}, false, Form::Tuple(key)) => Position::SnapshotChunk(Some(key)),
            (Detection::Diff {}, false, form) => {
                return Err(wrong("diff mode's first snapshot continues after the key tuple of its last chunk", &form))
            }
            // `diff` keeps no position after its first snapshot: a form a former mode wrote is
            // carried unchanged and never read.
            (Detection::Diff {}, true, _) => Position::None,
            (Detection::WarehouseDiff {}, _, Form::Progress(progress)) => Position::WarehouseDiff(Some(progress)),
            // Written by a cursor or diff run before the model's mode changed: no
            // `warehouse_diff` run has committed yet.
            (Detection::WarehouseDiff {}, _, Form::Tuple(_) | Form::Window(_)) => Position::WarehouseDiff(None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor_mode(lookback_ms: Option<u64>) -> Detection {
        Detection::Cursor {
            cursor_column: "updated_at".into(),
            created_column: None,
            lookback_ms,
            deleted_column: None,
            reconcile_interval_ms: None,
            before_images: true,
        }
    }

    fn tuple() -> Vec<Value> {
        vec![Value::TimestampMicros(1_700_000_000_000_000), Value::Long(7)]
    }

    const TUPLE: &str = r#"[{"t":"TimestampMicros","v":1700000000000000},{"t":"Long","v":7}]"#;

    #[test]
    fn no_position_is_the_start_of_every_mode() {
        assert_eq!(Position::parse("m", &cursor_mode(None), false, None), Ok(Position::Cursor(CursorPosition::default())));
        assert_eq!(Position::parse("m", &Detection::Diff {}, false, None), Ok(Position::SnapshotChunk(None)));
        assert_eq!(Position::parse("m", &Detection::Diff {}, true, None), Ok(Position::None));
        assert_eq!(Position::parse("m", &Detection::WarehouseDiff {}, true, None), Ok(Position::WarehouseDiff(None)));
    }

    #[test]
    fn a_cursor_tuple_reads_with_and_without_a_window_and_writes_back_unchanged() {
        assert_eq!(tuple_text(&tuple()), TUPLE, "the stored form of a tuple");
        let expected = Position::Cursor(CursorPosition { cursor: Some(tuple()), recent: Vec::new() });
        for lookback_ms in [None, Some(60_000)] {
            // A model switched from plain cursor mode to a window still reads the bare tuple.
            assert_eq!(Position::parse("m", &cursor_mode(lookback_ms), true, Some(TUPLE)), Ok(expected.clone()));
        }
    }

    #[test]
    fn a_look_back_position_reads_its_pairs_and_writes_back_unchanged() {
        let text = format!(r#"{{"cursor":{TUPLE},"recent":[[12345678901234567890,1699999999000000],[7,1700000000000000]]}}"#);
        let position = CursorPosition { cursor: Some(tuple()), recent: vec![(12_345_678_901_234_567_890, 1_699_999_999_000_000), (7, 1_700_000_000_000_000)] };
        for lookback_ms in [Some(60_000), None] {
            assert_eq!(Position::parse("m", &cursor_mode(lookback_ms), true, Some(&text)), Ok(Position::Cursor(position.clone())));
        }
        assert_eq!(position.window_text(), text);
        // Before the first row: no cursor yet, as a window commits it when the snapshot completes empty.
        let empty = CursorPosition::default();
        assert_eq!(empty.window_text(), r#"{"cursor":null,"recent":[]}"#);
        assert_eq!(Position::parse("m", &cursor_mode(Some(1)), true, Some(&empty.window_text())), Ok(Position::Cursor(empty)));
    }

    #[test]
    fn a_first_snapshot_chunk_key_reads_until_the_snapshot_is_done() {
        let key = r#"[{"t":"Long","v":3}]"#;
        assert_eq!(Position::parse("m", &Detection::Diff {}, false, Some(key)), Ok(Position::SnapshotChunk(Some(vec![Value::Long(3)]))));
        assert_eq!(tuple_text(&[Value::Long(3)]), key);
        // After the snapshot diff keeps no position; what a former mode left is ignored.
        assert_eq!(Position::parse("m", &Detection::Diff {}, true, Some(key)), Ok(Position::None));
        assert_eq!(Position::parse("m", &Detection::Diff {}, true, Some(r#"{"emitted":4,"complete":true}"#)), Ok(Position::None));
    }

    #[test]
    fn a_warehouse_diff_progress_reads_and_writes_back_unchanged() {
        for (text, progress) in
            [(r#"{"emitted":40,"complete":false}"#, RunProgress { emitted: 40, complete: false }), (r#"{"emitted":0,"complete":true}"#, RunProgress { emitted: 0, complete: true })]
        {
            assert_eq!(Position::parse("m", &Detection::WarehouseDiff {}, true, Some(text)), Ok(Position::WarehouseDiff(Some(progress))));
            assert_eq!(progress.text(), text);
        }
        // A cursor or diff position left from before the mode changed: no warehouse_diff run yet.
        assert_eq!(Position::parse("m", &Detection::WarehouseDiff {}, true, Some(TUPLE)), Ok(Position::WarehouseDiff(None)));
    }

    #[test]
    fn a_corrupt_position_is_an_error_that_names_the_model_shows_the_text_and_says_the_fix() {
        let cases: [(&Detection, bool, &str, &str); 8] = [
            (&Detection::WarehouseDiff {}, true, r#"{"emitted":"ten","complete":false}"#, "looks like a warehouse_diff progress but does not parse"),
            (&Detection::WarehouseDiff {}, true, r#"{"emitted":10}"#, "does not parse"),
            (&Detection::WarehouseDiff {}, false, "not json", "it is not JSON"),
            (&Detection::Diff {}, false, r#"{"emitted":10,"complete":false}"#, "but this is a warehouse_diff progress"),
            (&Detection::Diff {}, true, "[1, 2", "it is not JSON"),
            (&cursor_mode(None), true, r#"{"emitted":10,"complete":true}"#, "cursor mode continues from a cursor tuple or a look-back position"),
            (&cursor_mode(Some(1)), true, "[]", "the tuple is empty"),
            (&cursor_mode(None), true, r#"[{"t":"Nope","v":1}]"#, "not a tuple of tagged values"),
        ];
        for (detection, snapshot_done, text, problem) in cases {
            let error = Position::parse("members", detection, snapshot_done, Some(text)).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with("model members: its stored position cannot be used: "), "{message}");
            assert!(message.contains(problem), "{text}: {message}");
            assert!(message.contains(&format!("Found: {text:?}.")), "{message}");
            assert!(message.contains("Fix: ") && message.contains(r#"with key "members" to the poller's state topic"#), "{message}");
        }
    }

    #[test]
    fn the_error_reads_as_documented() {
        // docs/poller.md, "The stored position", shows this message.
        let error = Position::parse("members", &Detection::Diff {}, false, Some("garbage")).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"model members: its stored position cannot be used: it is not JSON (expected value at line 1 column 1). Found: "garbage". Nothing was read or emitted. Fix: if the model's detection mode was just changed, change it back; otherwise reset the model's progress: produce a tombstone (a null value) with key "members" to the poller's state topic (<kafka.topic_prefix>.poller.state) and restart, and the model takes its first snapshot again (or give it new topics with a new kafka.topic_prefix)"#
        );
    }

    #[test]
    fn a_long_position_is_shortened_in_the_error() {
        let text = format!(r#"{{"cursor":null,"recent":[{}"#, "[1,2],".repeat(5000));
        let error = Position::parse("m", &cursor_mode(Some(1)), true, Some(&text)).unwrap_err();
        assert!(error.found.ends_with(&format!("… ({} bytes)", text.len())), "{}", error.found);
        assert!(error.found.len() < 300);
    }
}
