"""BTS predictive maintenance: data, models, lineage and serving on DVC and MLflow."""

import sys

__version__ = "0.1.0"

# With pyspark installed (the batch engine), pandera imports pyspark.pandas on its own import, to patch pandas for
# pyspark's type hints: 0.6 s in every process and a FutureWarning under pandas 3, for nothing bts uses (the batch
# engine needs pyspark.sql only). Marking the module absent makes pandera skip it.
sys.modules.setdefault("pyspark.pandas", None)
