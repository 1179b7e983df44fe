//! What one SQL statement may take: time and answer rows.
//!
//! A scan of a view is bounded already (its rows and its read time, in [`crate::pg`]), but
//! what a statement does with its scans is not: a cross join of a few views asks for more rows
//! than any machine holds. [`SqlLimits`] is a DataFusion physical optimizer rule that puts
//! [`LimitExec`] on top of every plan; it ends the statement with an error once its time is
//! up or once it has answered more rows than allowed, and dropping the plan's stream stops the
//! work underneath. When the statement's streams are done it is counted, with its latency, in
//! `duet_serving_requests_total{protocol="sql",route="select"}` (status `ok` or `error`) and
//! `duet_serving_request_seconds`.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::config::ConfigOptions;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};

use crate::error::Error;
use crate::metrics::{RouteKey, ServingMetrics};

/// The limits of one SQL statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    /// Longest a statement may run, from planning to its last row.
    pub time: Duration,
    /// Most rows a statement may answer.
    pub rows: usize,
}

impl Default for SqlLimits {
    /// The HTTP API's: [`crate::http::TIME_LIMIT_S`] and [`crate::http::MAX_ROWS_READ`].
    fn default() -> Self {
        SqlLimits {
            time: Duration::from_secs(crate::http::TIME_LIMIT_S),
            rows: crate::http::MAX_ROWS_READ,
        }
    }
}

/// The rule that puts [`LimitExec`] on every plan: the limits, and where statements are
/// counted.
#[derive(Debug, Clone, Default)]
pub struct SqlGuard {
    /// The limits of each statement.
    pub limits: SqlLimits,
    /// Where each statement is counted when done.
    pub metrics: Arc<ServingMetrics>,
}

impl PhysicalOptimizerRule for SqlGuard {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(LimitExec {
            input: plan,
            limits: self.limits,
            deadline: tokio::time::Instant::now() + self.limits.time,
            answered: Arc::new(AtomicUsize::new(0)),
            statement: Arc::new(Statement {
                started: std::time::Instant::now(),
                failed: AtomicBool::new(false),
                metrics: self.metrics.clone(),
            }),
        }))
    }

    fn name(&self) -> &str {
        "duet_sql_limits"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// One statement, counted when the last of its plan and streams is dropped.
#[derive(Debug)]
struct Statement {
    started: std::time::Instant,
    failed: AtomicBool,
    metrics: Arc<ServingMetrics>,
}

impl Drop for Statement {
    fn drop(&mut self) {
        let status = if self.failed.load(Ordering::Relaxed) {
            "error"
        } else {
            "ok"
        };
        self.metrics.observe(
            RouteKey {
                protocol: "sql",
                route: "select".to_string(),
            },
            status,
            self.started.elapsed(),
        );
    }
}

/// The top of every SQL plan: passes its input's rows through until the statement's time is
/// up or its rows are too many (counted over all partitions), then ends with the reason.
#[derive(Debug)]
pub struct LimitExec {
    input: Arc<dyn ExecutionPlan>,
    limits: SqlLimits,
    deadline: tokio::time::Instant,
    answered: Arc<AtomicUsize>,
    statement: Arc<Statement>,
}

impl DisplayAs for LimitExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LimitExec: time={:?}, rows={}",
            self.limits.time, self.limits.rows
        )
    }
}

impl ExecutionPlan for LimitExec {
    fn name(&self) -> &str {
        "LimitExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "LimitExec has one input, given {}",
                children.len()
            )));
        }
        Ok(Arc::new(LimitExec {
            input: children.swap_remove(0),
            limits: self.limits,
            deadline: self.deadline,
            answered: self.answered.clone(),
            statement: self.statement.clone(),
        }))
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let limited = Limited {
            input,
            limits: self.limits,
            timer: Box::pin(tokio::time::sleep_until(self.deadline)),
            answered: self.answered.clone(),
            statement: self.statement.clone(),
            done: false,
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, limited)))
    }
}

/// One partition's stream under the statement's limits.
struct Limited {
    input: SendableRecordBatchStream,
    limits: SqlLimits,
    timer: Pin<Box<tokio::time::Sleep>>,
    answered: Arc<AtomicUsize>,
    statement: Arc<Statement>,
    done: bool,
}

impl Limited {
    fn end(&mut self, e: Error) -> Poll<Option<DfResult<RecordBatch>>> {
        self.done = true;
        self.statement.failed.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(DataFusionError::External(Box::new(e)))))
    }
}

impl Stream for Limited {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            let secs = self.limits.time.as_secs_f64();
            return self.end(Error::TooCostly(format!(
                "the statement ran longer than the {secs} s one may: bound its range (WHERE bucket >= … AND bucket < …) or join less"
            )));
        }
        match self.input.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                let n = self
                    .answered
                    .fetch_add(batch.num_rows(), Ordering::Relaxed)
                    .saturating_add(batch.num_rows());
                if n > self.limits.rows {
                    let max = self.limits.rows;
                    return self.end(Error::TooCostly(format!(
                        "the statement answers more than the {max} rows one may: aggregate, or add LIMIT"
                    )));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.statement.failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }
}
