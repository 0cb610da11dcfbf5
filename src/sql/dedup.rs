//! `within_watermark(time)`: the marker that makes `SELECT DISTINCT ON (keys,
//! within_watermark(time))` over a stream Spark's `dropDuplicatesWithinWatermark` (see
//! [`crate::planner::dedup`]). As a function it is the constant `true`, so the same query on a
//! static table is `DISTINCT ON (keys)`.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

/// The `within_watermark` function. See the [module docs](self).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct WithinWatermark {
    signature: Signature,
}

impl WithinWatermark {
    pub(crate) fn new() -> Self {
        WithinWatermark {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for WithinWatermark {
    fn name(&self) -> &str {
        "within_watermark"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))
    }
}
