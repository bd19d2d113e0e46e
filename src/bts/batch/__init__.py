"""`bts batch-predict`: raw exports scored in bulk, with pandas or on Apache Spark, every output row carrying its model's lineage.

`inputs` finds and reads the exports (checked against the raw schema file by
file), `scoring` turns clean readings into predictions with the library's own
feature code, `output` stages the result beside the output and publishes it
whole, `pandas_engine` and `spark_engine` run the same steps on one process or
on a Spark cluster, and `command` ties them to the command line.

This module holds only the defaults the `bts` parser shows, so `bts --help`
stays fast.
"""

DEFAULT_MASTER = "local[*]"
