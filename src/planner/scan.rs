//! How a stream appears inside DataFusion: a table provider and its leaf execution plan.
//!
//! [`StreamTable`] registers a stream in the catalog so that SQL and DataFrames can use it like any
//! table. Its scan is a [`StreamScanExec`] with no data of its own: a streaming query plans once
//! and, for every batch, binds the batch's rows into each scan (see
//! [`IncrementalPlan::bind`](super::IncrementalPlan::bind)). Executing an unbound scan is what
//! happens when someone runs a plain query over a stream, and it says so.
//!
//! The same leaf, without a source, feeds a stateful operator's output into the plan that runs
//! after it ([`OperatorOutputTable`]).

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};

use crate::source::{Source, project_schema};
use crate::sql::Watermark;

/// A stream in the catalog: the source plus its declared event-time watermark.
#[derive(Debug)]
pub(crate) struct StreamTable {
    pub(crate) name: String,
    pub(crate) source: Arc<dyn Source>,
    pub(crate) watermark: Option<Watermark>,
    /// After this long without new rows, the stream no longer holds the watermark back.
    pub(crate) idle_timeout: Option<std::time::Duration>,
    /// The connector the stream was declared with; `None` for a source registered from Rust.
    pub(crate) connector: Option<&'static str>,
}

impl StreamTable {
    pub(crate) fn with_idle_timeout(mut self, idle_timeout: Option<std::time::Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    pub(crate) fn with_connector(mut self, connector: &'static str) -> Self {
        self.connector = Some(connector);
        self
    }

    /// A stream called `name`; a watermark must name a timestamp column of the source.
    pub(crate) fn try_new(
        name: &str,
        source: Arc<dyn Source>,
        watermark: Option<Watermark>,
    ) -> crate::error::Result<Self> {
        if let Some(w) = &watermark {
            let schema = source.schema();
            let field = schema.field_with_name(&w.column).map_err(|_| {
                let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                crate::error::Error::plan(format!(
                    "stream '{name}': WATERMARK FOR {}: there is no such column (unquoted names are in lower \
                     case); its columns: {}",
                    w.column,
                    columns.join(", ")
                ))
            })?;
            if !matches!(
                field.data_type(),
                datafusion::arrow::datatypes::DataType::Timestamp(_, _)
            ) {
                return Err(crate::error::Error::plan(format!(
                    "stream '{name}': WATERMARK FOR {}: the column is {}, a watermark needs a TIMESTAMP column",
                    w.column,
                    field.data_type()
                )));
            }
        }
        Ok(StreamTable {
            name: name.to_string(),
            source,
            watermark,
            idle_timeout: None,
            connector: None,
        })
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema =
            project_schema(&self.source.schema(), projection.map(|p| p.as_slice())).map_err(|e| e.into_datafusion())?;
        let origin = ScanOrigin {
            source: self.source.clone(),
            watermark: self.watermark.clone(),
            idle_timeout: self.idle_timeout,
        };
        Ok(Arc::new(StreamScanExec::new(
            self.name.clone(),
            Some(origin),
            projection.cloned(),
            schema,
            None,
        )))
    }
}

/// The output of a stateful operator, as a table the rest of the query reads.
#[derive(Debug)]
pub(crate) struct OperatorOutputTable {
    /// The operator's id.
    pub(crate) operator: usize,
    /// Its columns, with positional names (`c0`, `c1`, ...).
    pub(crate) schema: SchemaRef,
    /// The columns (by the names the query gives them) that carry event time under a watermark:
    /// an aggregation over them downstream can close windows.
    pub(crate) watermarked: Vec<String>,
}

#[async_trait]
impl TableProvider for OperatorOutputTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema = project_schema(&self.schema, projection.map(|p| p.as_slice())).map_err(|e| e.into_datafusion())?;
        let mut scan = StreamScanExec::new(
            format!("output of stateful operator {}", self.operator),
            None,
            projection.cloned(),
            schema,
            None,
        );
        scan.operator = Some(self.operator);
        Ok(Arc::new(scan))
    }
}

/// Where a stream scan's rows come from.
#[derive(Debug, Clone)]
pub(crate) struct ScanOrigin {
    pub(crate) source: Arc<dyn Source>,
    pub(crate) watermark: Option<Watermark>,
    pub(crate) idle_timeout: Option<std::time::Duration>,
}

/// The leaf of a streaming plan: one batch's rows of one stream, once bound.
pub(crate) struct StreamScanExec {
    pub(crate) stream: String,
    /// The stream's source; `None` for a stateful operator's output.
    pub(crate) origin: Option<ScanOrigin>,
    /// The stateful operator whose output this leaf reads, if it reads one.
    pub(crate) operator: Option<usize>,
    pub(crate) projection: Option<Vec<usize>>,
    /// The batch's rows; taken by the (single) execution of this node.
    input: Mutex<Option<SendableRecordBatchStream>>,
    /// Whether rows were bound (an unbound scan belongs to a plan that is not a streaming query).
    bound: bool,
    properties: Arc<PlanProperties>,
}

impl StreamScanExec {
    pub(crate) fn new(
        stream: String,
        origin: Option<ScanOrigin>,
        projection: Option<Vec<usize>>,
        schema: SchemaRef,
        input: Option<SendableRecordBatchStream>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        StreamScanExec {
            stream,
            origin,
            operator: None,
            projection,
            bound: input.is_some(),
            input: Mutex::new(input),
            properties: Arc::new(properties),
        }
    }

    /// The same scan with one batch's rows to hand out.
    pub(crate) fn bind(&self, input: SendableRecordBatchStream) -> Self {
        let mut bound = StreamScanExec::new(
            self.stream.clone(),
            self.origin.clone(),
            self.projection.clone(),
            self.properties.eq_properties.schema().clone(),
            Some(input),
        );
        bound.operator = self.operator;
        bound
    }
}

impl fmt::Debug for StreamScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamScanExec")
            .field("stream", &self.stream)
            .field("projection", &self.projection)
            .field("bound", &self.bound)
            .finish()
    }
}

impl DisplayAs for StreamScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamScanExec: stream={}", self.stream)?;
        if let Some(p) = &self.projection {
            write!(f, ", projection={p:?}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StreamScanExec {
    fn name(&self) -> &str {
        "StreamScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let input = self.input.lock().unwrap_or_else(|e| e.into_inner()).take();
        match input {
            Some(stream) => Ok(stream),
            None if self.bound => Err(crate::error::Error::Internal(format!(
                "the batch of stream '{}' was read twice",
                self.stream
            ))
            .into_datafusion()),
            None => Err(crate::error::Error::plan(format!(
                "'{}' is a stream: a query over it runs as a streaming query, started with \
                 INSERT INTO <sink> SELECT ... (or write_stream().start() in Rust)",
                self.stream
            ))
            .into_datafusion()),
        }
    }
}
