//! `CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '<a files sink's directory>'`: DataFusion's
//! listing table over exactly the files the sink committed.
//!
//! # Background
//! DataFusion's listing table reads every file it lists; over a files sink's output that includes
//! files of a batch being written, of a batch that crashed, and of tables a complete batch
//! replaced. So the session's table factories are wrapped: a location with a
//! `_tidewater_metadata/` directory becomes a table that reads the manifest at every scan and
//! hands DataFusion one table path per committed file (the directory, with the file's name as
//! glob, so `column=value/` directories still give the partition columns). Other locations go
//! to DataFusion unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{Constraints, TableReference};
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown, TableType};
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{ExecutionPlan, project_schema};
use futures::TryStreamExt;

use crate::storage::{self, ManifestEntry};

/// Wraps a table factory (DataFusion's `ListingTableFactory`) so that a files sink's output
/// directory reads as its committed files only.
#[derive(Debug)]
pub(crate) struct CommittedFilesFactory {
    inner: Arc<dyn TableProviderFactory>,
}

impl CommittedFilesFactory {
    pub(crate) fn new(inner: Arc<dyn TableProviderFactory>) -> Self {
        CommittedFilesFactory { inner }
    }
}

#[async_trait]
impl TableProviderFactory for CommittedFilesFactory {
    async fn create(&self, state: &dyn Session, cmd: &CreateExternalTable) -> DfResult<Arc<dyn TableProvider>> {
        let [location] = cmd.locations.as_slice() else {
            return self.inner.create(state, cmd).await;
        };
        let Ok(url) = ListingTableUrl::parse(location) else {
            return self.inner.create(state, cmd).await;
        };
        if url.get_glob().is_some() {
            return self.inner.create(state, cmd).await;
        }
        let store = state.runtime_env().object_store(&url)?;
        let url = match url.is_collection() {
            true => url,
            // A file, or a directory named without the trailing `/`.
            false if store.head(url.prefix()).await.is_ok() => return self.inner.create(state, cmd).await,
            false => ListingTableUrl::parse(format!("{location}/"))?,
        };
        let manifest = storage::read_manifest(&store, url.prefix(), location, None)
            .await
            .map_err(|e| e.into_datafusion())?;
        match manifest {
            None => self.inner.create(state, cmd).await,
            Some(entries) => {
                tracing::debug!(%location, entries = entries.len(), "external table over a files sink's output");
                Ok(Arc::new(
                    CommittedFilesTable::try_new(state, cmd, location, url, store, &entries).await?,
                ))
            }
        }
    }
}

/// A files sink's output as a table: at each scan, a listing table over the committed files.
#[derive(Debug)]
struct CommittedFilesTable {
    /// The output directory.
    url: ListingTableUrl,
    store: Arc<dyn ObjectStore>,
    /// The location as written, for messages and to name list-files cache entries.
    location: String,
    options: ListingOptions,
    file_schema: SchemaRef,
    /// The table over the whole directory, never scanned: answers for the schema, constraints and
    /// filter push-down.
    template: ListingTable,
    definition: Option<String>,
    constraints: Constraints,
    column_defaults: HashMap<String, Expr>,
}

impl CommittedFilesTable {
    async fn try_new(
        state: &dyn Session,
        cmd: &CreateExternalTable,
        location: &str,
        url: ListingTableUrl,
        store: Arc<dyn ObjectStore>,
        entries: &[ManifestEntry],
    ) -> DfResult<Self> {
        let session_state = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("CREATE EXTERNAL TABLE needs a SessionState".to_string()))?;
        let format = session_state
            .get_file_format_factory(cmd.file_type.as_str())
            .ok_or_else(|| DataFusionError::Plan(format!("there is no file format '{}'", cmd.file_type)))?
            .create(session_state, &cmd.options)?;
        let first_file = storage::visible(entries).iter().flat_map(|e| &e.files).next();
        let mut partition_names = cmd.table_partition_cols.clone();
        let infer_partitions = session_state
            .config_options()
            .execution
            .listing_table_factory_infer_partitions;
        if partition_names.is_empty()
            && cmd.schema.fields().is_empty()
            && infer_partitions
            && let Some(file) = first_file
        {
            let relative = Path::parse(&file.path).map_err(|e| DataFusionError::External(Box::new(e)))?;
            partition_names = storage::partition_values(relative.parts())
                .into_iter()
                .map(|(column, _)| column)
                .collect();
        }
        let options = ListingOptions::new(format).with_file_extension("");
        let (file_schema, partition_columns) = if cmd.schema.fields().is_empty() {
            let file = first_file.ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "'{location}' is the output of a files sink that has committed no files yet, so its \
                     columns cannot be inferred: declare them, e.g. CREATE EXTERNAL TABLE t (a INT, ...)"
                ))
            })?;
            let schema = options
                .infer_schema(state, &url.clone().with_glob(file_name(&file.path))?)
                .await?;
            // DataFusion's type for partition columns it infers.
            let text = DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8));
            let columns = partition_names.into_iter().map(|name| (name, text.clone())).collect();
            (schema, columns)
        } else {
            let declared = cmd.schema.inner();
            let columns = partition_names
                .iter()
                .map(|name| Ok((name.clone(), declared.field_with_name(name)?.data_type().clone())))
                .collect::<DfResult<Vec<_>>>()?;
            let fields: Vec<_> = declared
                .fields()
                .iter()
                .filter(|f| !partition_names.contains(f.name()))
                .cloned()
                .collect();
            (Arc::new(Schema::new(fields)), columns)
        };
        let options = options
            .with_table_partition_cols(partition_columns)
            .with_file_sort_order(cmd.order_exprs.clone());
        // Never scanned: it would read every file of the directory.
        let template = ListingTable::try_new(
            ListingTableConfig::new(url.clone())
                .with_listing_options(options.clone())
                .with_schema(file_schema.clone()),
        )?
        .with_definition(cmd.definition.clone())
        .with_constraints(cmd.constraints.clone())
        .with_column_defaults(cmd.column_defaults.clone());
        Ok(CommittedFilesTable {
            url,
            store,
            location: location.to_string(),
            options,
            file_schema,
            template,
            definition: cmd.definition.clone(),
            constraints: cmd.constraints.clone(),
            column_defaults: cmd.column_defaults.clone(),
        })
    }

    /// A listing table over the files committed now (`None` when there are none).
    async fn committed(&self, state: &dyn Session) -> DfResult<Option<ListingTable>> {
        let entries = storage::read_manifest(&self.store, self.url.prefix(), &self.location, None)
            .await
            .map_err(|e| e.into_datafusion())?
            .unwrap_or_default();
        let visible = storage::visible(&entries);
        // Listings are cached per table reference: one per manifest version sees each version's files.
        let version = visible.last().map_or(0, |e| e.batch_id + 1);
        let reference = TableReference::bare(format!("{}@{version}", self.location));
        let paths = visible
            .iter()
            .flat_map(|e| &e.files)
            .map(|f| {
                Ok(self
                    .url
                    .clone()
                    .with_glob(file_name(&f.path))?
                    .with_table_ref(reference.clone()))
            })
            .collect::<DfResult<Vec<_>>>()?;
        if paths.is_empty() {
            return Ok(None);
        }
        if paths.len() > 1 {
            // Every path lists the directory; list it once, into the cache, for all of them.
            let directory = self.url.clone().with_table_ref(reference);
            let _: Vec<_> = directory
                .list_all_files(state, self.store.as_ref(), "")
                .await?
                .try_collect()
                .await?;
        }
        let config = ListingTableConfig::new_with_multi_paths(paths)
            .with_listing_options(self.options.clone())
            .with_schema(self.file_schema.clone());
        Ok(Some(
            ListingTable::try_new(config)?
                .with_cache(state.runtime_env().cache_manager.get_file_statistic_cache())
                .with_definition(self.definition.clone())
                .with_constraints(self.constraints.clone())
                .with_column_defaults(self.column_defaults.clone()),
        ))
    }
}

/// The last segment of a committed file's relative path.
fn file_name(relative: &str) -> &str {
    relative.rsplit('/').next().unwrap_or(relative)
}

#[async_trait]
impl TableProvider for CommittedFilesTable {
    fn schema(&self) -> SchemaRef {
        self.template.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.template.constraints()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.template.get_table_definition()
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.template.get_column_default(column)
    }

    /// As the listing table, except that filters on partition columns are evaluated on the rows:
    /// the listing table's partition pruning looks for directories named with its own escapes,
    /// not Hive's (`day=10:00` rather than `day=10%3A00`), and would miss files with matching rows.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(self
            .template
            .supports_filters_pushdown(filters)?
            .into_iter()
            .map(|pushdown| match pushdown {
                TableProviderFilterPushDown::Exact => TableProviderFilterPushDown::Unsupported,
                other => other,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match self.committed(state).await? {
            Some(table) => table.scan(state, projection, filters, limit).await,
            None => Ok(Arc::new(EmptyExec::new(project_schema(&self.schema(), projection)?))),
        }
    }
}
