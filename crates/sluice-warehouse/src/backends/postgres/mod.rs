//! PostgreSQL as a warehouse: one shared connection for reads, a private one for each
//! `warehouse_diff` transaction, and one for `LISTEN`.
//!
//! Guarantees:
//! - **Reads are exact and consistent.** Every page, scan and key check is one statement (one
//!   snapshot of the model); numeric is read as text and cursor parameters are cast back to
//!   their column's type in SQL ([`types`], [`crate::sql`]).
//! - **Errors are classified.** Connection (08xxx) and transaction-rollback (40xxx, e.g.
//!   serialization) failures and timeouts are `Unavailable` (retried); any other database error
//!   is the model's (bad SQL, missing column) and stops it with PostgreSQL's message.
//! - **A full read streams**: memory stays flat however large the model is.
//! - **Notifications** (`notify_channel`) come from a dedicated connection that is re-established
//!   2 s after it drops ([`ChangeNotifications`]).
//!
//! Layout, the same for every warehouse: `mod.rs` (connection, session, [`Warehouse`]),
//! `types.rs` (type mapping, value reading, dialect), `snapshot.rs` ([`crate::SnapshotStore`]),
//! `sync_log.rs` ([`crate::SyncLog`]).

use std::time::Duration;

use futures::StreamExt as _;
use sluice_core::config::ModelConfig;
use sluice_core::{Column, Row, RowSchema};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls};

mod snapshot;
mod sync_log;
mod types;

use crate::notifications::{ChangeNotifications, Notifications};
use crate::session::{self, Session};
use crate::sql::{self, ident};
use crate::{model_schema, KeyCheck, Page, Warehouse, WarehouseError};
use types::DIALECT;

/// How long connecting may take before it counts as `Unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the notification listener waits before reconnecting.
const LISTEN_RETRY: Duration = Duration::from_secs(2);

/// A connected PostgreSQL warehouse.
pub struct Postgres {
    client: Client,
    /// Kept to open private connections: for multi-statement transactions (`warehouse_diff`;
    /// `client` is shared by every model, so a BEGIN on it would swallow their queries) and for
    /// `LISTEN`.
    url: String,
}

fn unavailable(e: tokio_postgres::Error) -> WarehouseError {
    WarehouseError::Unavailable(e.to_string())
}

/// Connection (08xxx) and transaction-rollback (40xxx, e.g. serialization) failures are worth
/// retrying; any other database error is the model's (bad SQL, missing column).
fn classify(model: &str, e: tokio_postgres::Error) -> WarehouseError {
    match e.as_db_error() {
        Some(db) if !db.code().code().starts_with("08") && !db.code().code().starts_with("40") => {
            WarehouseError::Model { model: model.to_string(), message: db.message().to_string() }
        }
        _ => unavailable(e),
    }
}

impl Postgres {
    /// Connect; the connection task runs until the client is dropped.
    pub async fn connect(url: &str) -> Result<Postgres, WarehouseError> {
        let client = tokio::time::timeout(CONNECT_TIMEOUT, connect(url, "warehouse connection closed"))
            .await
            .map_err(|_| WarehouseError::Unavailable(format!("connecting to PostgreSQL timed out after {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(unavailable)?;
        Ok(Postgres { client, url: url.to_string() })
    }

    /// The underlying client, for tools that need plain SQL (CLI, tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A session on the shared connection, for `model`.
    fn session<'a>(&'a self, model: &'a ModelConfig) -> PgSession<'a> {
        PgSession { client: &self.client, model: model.name.get_ref() }
    }
}

/// Open a connection to `url`; its driver task runs until the client is dropped and logs
/// `closed` if it ends with an error.
async fn connect(url: &str, closed: &'static str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "{closed}");
        }
    });
    Ok(client)
}

/// A [`Session`] on one connection, its errors attributed to `model`.
struct PgSession<'a> {
    client: &'a Client,
    model: &'a str,
}

impl Session for PgSession<'_> {
    fn model(&self) -> &str {
        self.model
    }

    async fn execute(&mut self, sql: &str) -> Result<(), WarehouseError> {
        self.client.batch_execute(sql).await.map_err(|e| classify(self.model, e))
    }

    async fn query(&mut self, sql: &str, params: &[Option<String>], columns: &[Column]) -> Result<Vec<Row>, WarehouseError> {
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.client.query(sql, &params).await.map_err(|e| classify(self.model, e))?;
        rows.iter().map(|row| types::read_row(row, columns, self.model)).collect()
    }
}

impl Warehouse for Postgres {
    async fn describe(&self, model: &ModelConfig) -> Result<RowSchema, WarehouseError> {
        let name = model.name.get_ref();
        let statement = self.client.prepare(&sql::columns_query(model)).await.map_err(|e| match e.as_db_error() {
            Some(db) => WarehouseError::Model { model: name.clone(), message: format!("cannot read the model: {}", db.message()) },
            None => unavailable(e),
        })?;
        let types = model
            .columns
            .iter()
            .zip(statement.columns())
            .map(|(column, described)| types::column_type(name, column, described.type_(), described.type_modifier()))
            .collect::<Result<Vec<_>, _>>()?;
        model_schema(model, types)
    }

    async fn fetch_page(&self, model: &ModelConfig, schema: &RowSchema, page: Page) -> Result<Vec<Row>, WarehouseError> {
        session::page(&mut self.session(model), &DIALECT, model, schema, &page).await
    }

    async fn check_keys(&self, model: &ModelConfig, schema: &RowSchema) -> Result<KeyCheck, WarehouseError> {
        session::check_keys(&mut self.session(model), schema, &model.relation_sql()).await
    }

    async fn scan<F>(&self, model: &ModelConfig, schema: &RowSchema, mut each: F) -> Result<u64, WarehouseError>
    where
        F: FnMut(Row) -> Result<(), WarehouseError> + Send,
    {
        use futures::TryStreamExt as _;
        let name = model.name.get_ref();
        // query_raw streams rows as the server sends them: memory stays flat however large the
        // model is. One statement = one consistent snapshot of the model.
        let stream =
            self.client.query_raw(&DIALECT.scan(model, schema), std::iter::empty::<Option<String>>()).await.map_err(|e| classify(name, e))?;
        futures::pin_mut!(stream);
        let mut count = 0u64;
        while let Some(row) = stream.try_next().await.map_err(|e| classify(name, e))? {
            each(types::read_row(&row, &schema.columns, name)?)?;
            count += 1;
        }
        Ok(count)
    }
}

impl ChangeNotifications for Postgres {
    fn notifications(&self, channels: &[String]) -> Option<Notifications> {
        let (url, channels) = (self.url.clone(), channels.to_vec());
        Some(Notifications::spawn(move |sender| async move {
            // Reconnect with a delay when the connection drops: a NOTIFY missed meanwhile only
            // delays a run to the model's next interval; it loses nothing.
            while !sender.is_closed() {
                if let Err(error) = listen(&url, &channels, &sender).await {
                    tracing::warn!(%error, "notify listener failed, reconnecting in 2 s");
                }
                tokio::select! {
                    _ = tokio::time::sleep(LISTEN_RETRY) => {}
                    _ = sender.closed() => {}
                }
            }
        }))
    }
}

/// `LISTEN` on `channels` over a new connection and send each notification's channel on
/// `sender`, until the connection ends or the receiver is dropped.
async fn listen(url: &str, channels: &[String], sender: &mpsc::UnboundedSender<String>) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    // The connection must be polled for the LISTENs to be sent and notifications to arrive: a
    // task drives it, forwarding notifications, until it fails or nobody listens any more.
    let forward = sender.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = forward.closed() => break,
            };
            match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if forward.send(n.channel().to_string()).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "notify connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    for channel in channels {
        client.batch_execute(&format!("LISTEN {}", ident(channel))).await?;
    }
    tracing::info!(channels = ?channels, "listening for NOTIFY");
    // The driver ends when the connection does (then this returns and the caller reconnects) or
    // when the stream was dropped.
    let _ended = driver.await;
    Ok(())
}
