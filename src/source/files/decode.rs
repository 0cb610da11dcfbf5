//! Turning one input file's bytes into record batches, with Spark's modes for malformed records.
//!
//! The fast path hands the whole file to arrow's JSON or CSV decoder. Only when that fails does the
//! file go through the slow path, record by record, so that each bad line can be nulled (with its
//! raw text in `_corrupt_record`), dropped, or reported with its line number, while every good
//! line is kept.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{FileFormat, MalformedMode};
use crate::error::{Error, Result};

/// Name of the optional column that receives the raw text of a malformed record.
pub(crate) const CORRUPT_RECORD_COLUMN: &str = "_corrupt_record";

/// Rows per record batch produced by the decoders.
const BATCH_SIZE: usize = 8192;

/// What decoding one file produced.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) batches: Vec<RecordBatch>,
    /// Malformed records kept as nulls (`permissive`).
    pub(crate) malformed: u64,
    /// Malformed records dropped (`drop_malformed`).
    pub(crate) dropped: u64,
}

/// How to decode the files of one read: the output schema (already projected) and where the
/// `_corrupt_record` column sits in it, if it was asked for.
#[derive(Debug, Clone)]
pub(crate) struct DecodePlan {
    pub(crate) format: FileFormat,
    pub(crate) mode: MalformedMode,
    /// The schema of the rows handed out.
    pub(crate) output: SchemaRef,
    /// `output` without the `_corrupt_record` column: what the format decoder produces.
    pub(crate) data: SchemaRef,
    /// Position of `_corrupt_record` in `output`.
    pub(crate) corrupt_index: Option<usize>,
}

impl DecodePlan {
    pub(crate) fn new(format: FileFormat, mode: MalformedMode, output: SchemaRef) -> Self {
        let corrupt_index = output.index_of(CORRUPT_RECORD_COLUMN).ok();
        let data_fields: Vec<_> = output
            .fields()
            .iter()
            .filter(|f| f.name() != CORRUPT_RECORD_COLUMN)
            .cloned()
            .collect();
        DecodePlan {
            format,
            mode,
            data: Arc::new(Schema::new(data_fields)),
            output,
            corrupt_index,
        }
    }

    /// Decodes one whole file.
    pub(crate) fn decode(&self, file: &str, bytes: Bytes) -> Result<Decoded> {
        match &self.format {
            FileFormat::Parquet => self.decode_parquet(file, bytes),
            FileFormat::Text => self.decode_text(bytes),
            FileFormat::Json | FileFormat::Csv { .. } => match self.decode_fast(&bytes) {
                Ok(batches) => Ok(Decoded {
                    batches: batches
                        .into_iter()
                        .map(|b| self.with_corrupt_column(b, None))
                        .collect::<Result<_>>()?,
                    ..Decoded::default()
                }),
                Err(_) => self.decode_by_line(file, &bytes),
            },
        }
    }

    fn decoder(&self) -> Result<Box<dyn RecordDecoder>, ArrowError> {
        Ok(match &self.format {
            FileFormat::Json => Box::new(
                datafusion::arrow::json::ReaderBuilder::new(self.data.clone())
                    .with_batch_size(BATCH_SIZE)
                    .build_decoder()?,
            ),
            FileFormat::Csv { delimiter, .. } => Box::new(
                datafusion::arrow::csv::ReaderBuilder::new(self.data.clone())
                    .with_batch_size(BATCH_SIZE)
                    .with_delimiter(*delimiter)
                    .build_decoder(),
            ),
            FileFormat::Parquet | FileFormat::Text => {
                return Err(ArrowError::InvalidArgumentError("not a line format".into()));
            }
        })
    }

    /// The whole file at once; fails on the first bad record.
    fn decode_fast(&self, bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
        let body = match self.format {
            FileFormat::Csv { header: true, .. } => skip_first_line(bytes),
            _ => bytes,
        };
        let mut decoder = self.decoder()?;
        let mut out = Vec::new();
        let mut buf = body;
        loop {
            let consumed = decoder.decode(buf)?;
            buf = &buf[consumed..];
            match decoder.flush()? {
                Some(batch) => out.push(batch),
                None if buf.is_empty() || consumed == 0 => break,
                None => {}
            }
        }
        // An empty slice tells the CSV decoder the input ended (a last line without newline).
        decoder.decode(&[])?;
        if let Some(batch) = decoder.flush()? {
            out.push(batch);
        }
        Ok(out)
    }

    /// Record by record, applying the malformed-record mode to each bad line.
    fn decode_by_line(&self, file: &str, bytes: &[u8]) -> Result<Decoded> {
        let mut decoded = Decoded::default();
        let mut rows: Vec<RecordBatch> = Vec::new();
        let mut skip_header = matches!(self.format, FileFormat::Csv { header: true, .. });
        for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if std::mem::take(&mut skip_header) || line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match self.decode_one(line) {
                Ok(batch) => rows.push(self.with_corrupt_column(batch, None)?),
                Err(e) => match self.mode {
                    MalformedMode::FailFast => {
                        return Err(Error::Input {
                            file: file.to_string(),
                            line: Some(index as u64 + 1),
                            message: format!("malformed record ({e}); mode is fail_fast"),
                        });
                    }
                    MalformedMode::DropMalformed => decoded.dropped += 1,
                    MalformedMode::Permissive => {
                        decoded.malformed += 1;
                        let nulls = RecordBatch::new_empty(self.data.clone());
                        let nulls = null_row(&nulls)?;
                        let raw = String::from_utf8_lossy(line);
                        rows.push(self.with_corrupt_column(nulls, Some(&raw))?);
                    }
                },
            }
        }
        if !rows.is_empty() {
            let batch = concat_batches(&self.output, &rows)
                .map_err(|e| Error::Internal(format!("concatenating decoded rows: {e}")))?;
            decoded.batches.push(batch);
        }
        Ok(decoded)
    }

    fn decode_one(&self, line: &[u8]) -> Result<RecordBatch, ArrowError> {
        let mut decoder = self.decoder()?;
        let consumed = decoder.decode(line)?;
        if consumed < line.len() {
            return Err(ArrowError::ParseError("unexpected data after the record".into()));
        }
        decoder.decode(&[])?;
        let batch = decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.data.clone()));
        if batch.num_rows() != 1 {
            return Err(ArrowError::ParseError(format!(
                "expected one record on the line, found {}",
                batch.num_rows()
            )));
        }
        Ok(batch)
    }

    /// Adds the `_corrupt_record` column (null, or `raw` for every row) when the output has one.
    fn with_corrupt_column(&self, batch: RecordBatch, raw: Option<&str>) -> Result<RecordBatch> {
        let Some(index) = self.corrupt_index else {
            return Ok(batch);
        };
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let corrupt: ArrayRef = match raw {
            Some(raw) => Arc::new(StringArray::from(vec![raw; batch.num_rows()])),
            None => new_null_array(&DataType::Utf8, batch.num_rows()),
        };
        let corrupt_type = self.output.field(index).data_type();
        let corrupt =
            cast(&corrupt, corrupt_type).map_err(|e| Error::Internal(format!("_corrupt_record column: {e}")))?;
        columns.insert(index, corrupt);
        RecordBatch::try_new(self.output.clone(), columns)
            .map_err(|e| Error::Internal(format!("adding _corrupt_record: {e}")))
    }

    fn decode_text(&self, bytes: Bytes) -> Result<Decoded> {
        let text = String::from_utf8_lossy(&bytes);
        let mut lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
        if lines.last() == Some(&"") {
            lines.pop();
        }
        let mut batches = Vec::new();
        for chunk in lines.chunks(BATCH_SIZE) {
            let values: ArrayRef = Arc::new(StringArray::from(chunk.to_vec()));
            let columns = self
                .output
                .fields()
                .iter()
                .map(|f| cast(&values, f.data_type()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Internal(format!("text column: {e}")))?;
            batches.push(
                RecordBatch::try_new_with_options(
                    self.output.clone(),
                    columns,
                    &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(chunk.len())),
                )
                .map_err(|e| Error::Internal(format!("text batch: {e}")))?,
            );
        }
        Ok(Decoded {
            batches,
            ..Decoded::default()
        })
    }

    /// Reads a Parquet file and aligns its columns to the declared schema by name: a missing
    /// column reads as nulls, a column of another type is cast (or the file is refused).
    fn decode_parquet(&self, file: &str, bytes: Bytes) -> Result<Decoded> {
        let input_error = |message: String| Error::Input {
            file: file.to_string(),
            line: None,
            message,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.with_batch_size(BATCH_SIZE).build())
            .map_err(|e| input_error(format!("not a readable Parquet file: {e}")))?;
        let mut batches = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| input_error(format!("reading Parquet: {e}")))?;
            let columns = self
                .data
                .fields()
                .iter()
                .map(|field| align_column(&batch, field).map_err(&input_error))
                .collect::<Result<Vec<_>>>()?;
            let aligned = RecordBatch::try_new_with_options(
                self.data.clone(),
                columns,
                &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
            )
            .map_err(|e| input_error(format!("column types: {e}")))?;
            batches.push(self.with_corrupt_column(aligned, None)?);
        }
        Ok(Decoded {
            batches,
            ..Decoded::default()
        })
    }
}

fn align_column(batch: &RecordBatch, field: &Field) -> Result<ArrayRef, String> {
    match batch.column_by_name(field.name()) {
        None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
        Some(column) => cast(column, field.data_type()).map_err(|e| {
            format!(
                "column '{}' is {} in the file but declared {}: {e}",
                field.name(),
                column.data_type(),
                field.data_type()
            )
        }),
    }
}

fn null_row(empty: &RecordBatch) -> Result<RecordBatch> {
    let columns = empty
        .schema_ref()
        .fields()
        .iter()
        .map(|f| new_null_array(f.data_type(), 1))
        .collect();
    RecordBatch::try_new(empty.schema(), columns).map_err(|e| {
        Error::plan(format!(
            "a malformed record cannot be kept as nulls because a column is NOT NULL ({e}); use mode drop_malformed"
        ))
    })
}

fn skip_first_line(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => &bytes[i + 1..],
        None => &[],
    }
}

/// The part of arrow's JSON and CSV push decoders that we use.
trait RecordDecoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, ArrowError>;
    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError>;
}

impl RecordDecoder for datafusion::arrow::json::reader::Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, ArrowError> {
        datafusion::arrow::json::reader::Decoder::decode(self, buf)
    }
    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        datafusion::arrow::json::reader::Decoder::flush(self)
    }
}

impl RecordDecoder for datafusion::arrow::csv::reader::Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, ArrowError> {
        datafusion::arrow::csv::reader::Decoder::decode(self, buf)
    }
    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        datafusion::arrow::csv::reader::Decoder::flush(self)
    }
}
