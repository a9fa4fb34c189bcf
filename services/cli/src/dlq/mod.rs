//! `sluice dlq list | show | redrive | purge --destination NAME [--error-class …] [--since …]
//! [--until …] [--key …]`: the dead letters of one destination.
//!
//! - `list` groups the dead letters by class, status and message (counts, first and last
//!   failure); `show` prints each one (or `--letter P:O`) with its headers and decoded record,
//!   values masked unless `--show-values`.
//! - `redrive` re-sends the selected `pending` dead letters through the destination's side topic
//!   and marks them in the ledger; a dead letter whose key has a newer change is not re-sent but
//!   marked and reported `superseded` ([`redrive`] has the argument why no key goes backwards and
//!   nothing is applied twice).
//! - `purge` marks the selected dead letters `purged` in the ledger (the dead-letter topic is
//!   append-only: [`ledger`]); without `--execute` it shows what it would purge. Every other
//!   dead letter is kept as it was.
//!
//! Guarantees: the filters select exactly the dead letters matching all of them; `purged` ones
//! are left out of `list`, `show` and `redrive`; nothing is written without `redrive` or
//! `purge --execute`; the output holds no row values unless `--show-values` (`show`), and the
//! log line of each command only counts.
//!
//! Exit codes (`crate::failure`): 0 done, 1 Kafka error, 2 bad config or arguments (unknown
//! destination, bad filter), 3 `show` found no dead letter.

pub(crate) mod decode;
mod filter;
mod ledger;
pub(crate) mod letters;
mod redrive;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_core::config::Config;
use sluice_core::naming;
use sluice_kafka::admin::TopicRole;
use sluice_kafka::producer::TransactionalProducer;
use tracing::Instrument;

use crate::failure::Failure;
use crate::scope::{self, Topic};
use decode::Decoders;
pub(crate) use filter::FilterArgs;
use filter::Filter;
use ledger::{Ledger, Status};
use letters::{Letter, LetterId};
use redrive::Decision;

/// The `sluice dlq` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum DlqCommand {
    /// Group the dead letters by class, status and message.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Print dead letters with their headers and decoded record (values masked).
    Show {
        #[command(flatten)]
        common: Common,
        /// Only this dead letter: `<partition>:<offset>` on the dead-letter topic.
        #[arg(long)]
        letter: Option<LetterId>,
        /// Print at most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print row values and the destination's response excerpt (personal data).
        #[arg(long)]
        show_values: bool,
    },
    /// Re-send the selected pending dead letters through the sink; skip (and report) those whose
    /// key has a newer change.
    Redrive {
        #[command(flatten)]
        common: Common,
    },
    /// Mark the selected dead letters purged (shown only, without --execute).
    Purge {
        #[command(flatten)]
        common: Common,
        /// Record the purge; without it, only show what would be purged.
        #[arg(long)]
        execute: bool,
    },
}

/// The options every `sluice dlq` subcommand takes.
#[derive(clap::Args, Debug)]
pub(crate) struct Common {
    /// The destination whose dead letters to act on (a `[[destinations]]` name).
    #[arg(long)]
    destination: String,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output as JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
    #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
    config: PathBuf,
}

/// A selected dead letter: the letter, its status and its decoded key (when decoded).
pub(crate) struct Selected<'a> {
    pub letter: &'a Letter,
    pub status: Status,
    pub key: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The dead letters of a destination and what its ledger says of them.
struct Book {
    letters: Vec<Letter>,
    ledger: Ledger,
    decoders: Option<Decoders>,
}

/// What a command works with.
struct Context {
    config: Config,
    destination: String,
    topics: Vec<Topic>,
    filter: Filter,
    json: bool,
}

impl Context {
    fn dead_letter_topic(&self) -> String {
        naming::dead_letter_topic(&self.config.kafka.topic_prefix, &self.destination)
    }

    fn ledger_topic(&self) -> String {
        naming::dead_letter_ledger_topic(&self.config.kafka.topic_prefix, &self.destination)
    }
}

/// Run a `sluice dlq` subcommand.
pub(crate) async fn run(command: DlqCommand) -> ExitCode {
    let _telemetry = sluice_telemetry::setup_telemetry("sluice", false, sluice_telemetry::Spans::Always);
    let (common, action) = match &command {
        DlqCommand::List { common } => (common, "list"),
        DlqCommand::Show { common, .. } => (common, "show"),
        DlqCommand::Redrive { common } => (common, "redrive"),
        DlqCommand::Purge { common, .. } => (common, "purge"),
    };
    let json = common.json;
    let span = tracing::info_span!("dlq", action, destination = %common.destination);
    let result = async {
        let context = context(common)?;
        match &command {
            DlqCommand::List { .. } => list(&context).await,
            DlqCommand::Show { letter, limit, show_values, .. } => show(&context, *letter, *limit, *show_values).await,
            DlqCommand::Redrive { .. } => redrive_command(&context).await,
            DlqCommand::Purge { execute, .. } => purge(&context, *execute).await,
        }
    }
    .instrument(span)
    .await;
    match result {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(failure) => failure.exit(json),
    }
}

fn context(common: &Common) -> Result<Context, Failure> {
    let config = scope::load(&common.config)?;
    let topics = scope::destination_topics(&config, &common.destination, None)?;
    let filter = Filter::parse(&common.filter).map_err(Failure::Config)?;
    Ok(Context { config, destination: common.destination.clone(), topics, filter, json: common.json })
}

/// Read the dead letters and the ledger (and the schemas, when keys must be decoded).
async fn book(context: &Context, decode: bool) -> Result<Book, Failure> {
    let kafka = context.config.kafka.clone();
    let (dlq, ledger) = (context.dead_letter_topic(), context.ledger_topic());
    let schemas = naming::schema_topic(&kafka.topic_prefix);
    let decode = decode || context.filter.needs_key();
    tokio::task::spawn_blocking(move || {
        let letters = letters::read_all(&kafka, &dlq)?;
        let ledger = Ledger::from_records(&letters::read_all(&kafka, &ledger)?).map_err(|e| Failure::Error(format!("{e}; fix or delete the record in topic {ledger}")))?;
        let decoders = if decode { Some(Decoders::load(&kafka, &schemas)?) } else { None };
        Ok(Book { letters, ledger, decoders })
    })
    .await
    .expect("reading does not panic")
}

/// The dead letters matching the filter whose status is one of `statuses`.
fn select<'a>(context: &Context, letters: &'a [Letter], ledger: &Ledger, mut decoders: Option<&mut Decoders>, statuses: &[Status]) -> Vec<Selected<'a>> {
    let mut selected = Vec::new();
    for letter in letters {
        let status = ledger.status(letter.id);
        if !statuses.contains(&status) {
            continue;
        }
        let key = match (&mut decoders, &letter.key) {
            (Some(decoders), Some(bytes)) => decoders.key(bytes).ok(),
            _ => None,
        };
        if context.filter.matches(letter, key.as_ref()) {
            selected.push(Selected { letter, status, key });
        }
    }
    selected
}

const VISIBLE: [Status; 3] = [Status::Pending, Status::Redriven, Status::Superseded];

/// One dead letter of a key, as `sluice inspect` shows it.
#[derive(Debug, Clone)]
pub(crate) struct KeyLetter {
    /// `<partition>:<offset>` on the dead-letter topic.
    pub id: String,
    pub class: String,
    /// The reason the sink gave (never personal data).
    pub message: String,
    /// `pending`, `redriven` or `superseded` (purged ones are left out, as `show` does).
    pub status: &'static str,
    pub attempts: u64,
    /// The change it carries: its offset on the change topic's partition.
    pub original_offset: Option<i64>,
    pub failed_at_ms: Option<i64>,
}

/// The dead letters of `destination` that carry a change of `key` (a JSON object of key
/// columns, as `--key` takes it) from the change topic `change_topic`, read and selected
/// exactly as `sluice dlq show --key` does.
pub(crate) async fn letters_of_key(config: &Config, destination: &str, change_topic: &str, key: &str) -> Result<Vec<KeyLetter>, Failure> {
    let filter = Filter::parse(&FilterArgs { key: Some(key.to_string()), ..FilterArgs::default() }).map_err(Failure::Config)?;
    let topics = scope::destination_topics(config, destination, None)?;
    let context = Context { config: config.clone(), destination: destination.to_string(), topics, filter, json: true };
    let mut book = book(&context, true).await?;
    let selected = select(&context, &book.letters, &book.ledger, book.decoders.as_mut(), &VISIBLE);
    Ok(selected
        .into_iter()
        .filter_map(|s| {
            let original = s.letter.original().ok();
            // A destination with several models: keep the letters of this model's topic.
            if original.as_ref().is_some_and(|o| o.topic != change_topic) {
                return None;
            }
            Some(KeyLetter {
                id: s.letter.id.to_string(),
                class: s.letter.class().to_string(),
                message: s.letter.message().to_string(),
                status: s.status.label(),
                attempts: s.letter.attempts(),
                original_offset: original.map(|o| o.offset),
                failed_at_ms: s.letter.failed_at_ms(),
            })
        })
        .collect())
}

async fn list(context: &Context) -> Result<String, Failure> {
    let mut book = book(context, false).await?;
    let purged = book.letters.iter().filter(|l| book.ledger.status(l.id) == Status::Purged).count();
    let selected = select(context, &book.letters, &book.ledger, book.decoders.as_mut(), &VISIBLE);
    tracing::info!(selected = selected.len(), purged, "dlq list");
    Ok(render::list(context.json, &context.destination, &selected, purged))
}

async fn show(context: &Context, only: Option<LetterId>, limit: usize, show_values: bool) -> Result<String, Failure> {
    let mut book = book(context, true).await?;
    let mut selected = select(context, &book.letters, &book.ledger, book.decoders.as_mut(), &VISIBLE);
    selected.retain(|s| only.is_none_or(|id| s.letter.id == id));
    if selected.is_empty() {
        let what = only.map_or("no dead letter matches the filter".to_string(), |id| format!("no dead letter {id} (not on the topic, purged, or not matching the filter)"));
        return Err(Failure::NothingMatched(format!("{what} for destination {:?}", context.destination)));
    }
    let total = selected.len();
    selected.truncate(limit);
    tracing::info!(selected = total, shown = selected.len(), show_values, "dlq show");
    let decoders = book.decoders.as_mut().expect("show decodes");
    Ok(render::show(context.json, &selected, total, decoders, show_values))
}

/// A redrive's or purge's transactional producer, created before the ledger is read (it fences
/// an earlier one of the same destination), with the side and ledger topics in place.
async fn producer(context: &Context) -> Result<(TransactionalProducer, String), Failure> {
    let kafka = &context.config.kafka;
    let ledger = (context.ledger_topic(), TopicRole::Compacted, 1);
    let side = scope::ensure_side_topic(&context.config, &context.destination, &context.topics, &[ledger]).await?;
    let id = naming::dead_letter_ledger_transactional_id(&kafka.topic_prefix, &context.destination);
    Ok((TransactionalProducer::new(kafka, &id).await?, side))
}

async fn redrive_command(context: &Context) -> Result<String, Failure> {
    let (producer, side_topic) = producer(context).await?;
    let mut book = book(context, false).await?;
    let selected = select(context, &book.letters, &book.ledger, book.decoders.as_mut(), &[Status::Pending]);
    let letters: Vec<&Letter> = selected.iter().map(|s| s.letter).collect();
    let newest = {
        let (kafka, owned): (_, Vec<Letter>) = (context.config.kafka.clone(), letters.iter().map(|l| (*l).clone()).collect());
        tokio::task::spawn_blocking(move || redrive::newest(&kafka, &owned.iter().collect::<Vec<_>>())).await.expect("reading does not panic")?
    };
    let operation = format!("redrive-{}", uuid::Uuid::new_v4());
    let now = chrono::Utc::now().timestamp_millis();
    let decisions: Vec<(LetterId, Decision)> = letters.iter().map(|l| (l.id, redrive::decide(l, &context.topics, &newest))).collect();
    let entries = decisions.iter().filter_map(|(id, d)| redrive::entry_of(*id, d, now, &operation)).collect();
    let sends: Vec<_> = decisions.iter().filter_map(|(id, d)| match d {
        Decision::Redrive(record) => Some((*id, record.clone())),
        _ => None,
    }).collect();
    redrive::write(&producer, &side_topic, &context.ledger_topic(), sends, entries).await?;
    let report = render::Redrive::of(&decisions);
    tracing::info!(selected = decisions.len(), redriven = report.redriven.len(), superseded = report.superseded.len(), unredrivable = report.unredrivable.len(), %operation, "dlq redrive done");
    Ok(render::redrive(context.json, &context.destination, &operation, &report))
}

async fn purge(context: &Context, execute: bool) -> Result<String, Failure> {
    let producer = if execute { Some(producer(context).await?.0) } else { None };
    let mut book = book(context, false).await?;
    let selected = select(context, &book.letters, &book.ledger, book.decoders.as_mut(), &VISIBLE);
    let operation = format!("purge-{}", uuid::Uuid::new_v4());
    let now = chrono::Utc::now().timestamp_millis();
    let ids: Vec<LetterId> = selected.iter().map(|s| s.letter.id).collect();
    if let Some(producer) = &producer {
        let entries = ids.iter().map(|&letter| ledger::Entry { letter, status: Status::Purged, at_ms: now, operation: operation.clone() }).collect();
        redrive::write(producer, "", &context.ledger_topic(), Vec::new(), entries).await?;
    }
    tracing::info!(purged = ids.len(), executed = execute, %operation, "dlq purge");
    // Kept: every dead letter not purged, before or now.
    let kept = book.letters.iter().filter(|l| book.ledger.status(l.id) != Status::Purged).count() - ids.len();
    Ok(render::purge(context.json, &context.destination, &ids, kept, execute))
}
