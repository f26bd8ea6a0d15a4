"""What a ``sql=`` query may contain: an allow-list of syntax, functions and cast targets.

A source has hundreds of functions, and some read a relation named in a string
(``table_to_xml('public.customers', ...)``, ``ts_stat('SELECT ...')``), change the session
(``set_config``), write (``lo_from_bytea``, ``nextval``) or wait (``pg_sleep_for``). Listing the bad
ones can never be complete, so nothing is denied here: a query passes only if every node of its
parsed tree is query syntax ldw knows, every function is one ldw lists as a pure computation over
its arguments (typed sqlglot functions shared by every dialect, plus per-dialect names sqlglot
keeps as anonymous calls), and every cast goes to a built-in scalar type. Anything else is
refused with the construct named. User-defined and schema-qualified functions are refused: their
bodies can read anything.
"""

from __future__ import annotations

from sqlglot import exp

from ldw.errors import InvalidMapping
from ldw.parse_errors import node_name, span

__all__ = ["check_query_nodes"]


def _classes(*names: str) -> frozenset[type]:
    """sqlglot expression classes by name; names this sqlglot lacks are simply not allowed."""
    return frozenset(getattr(exp, n) for n in names if isinstance(getattr(exp, n, None), type))


# Query structure: clauses, references, literals, operators' containers.
_STRUCTURE = _classes(
    "Select", "Union", "Except", "Intersect", "From", "Join", "Where", "Group", "Having",
    "Order", "Ordered", "Limit", "Offset", "Fetch", "With", "CTE", "TableAlias", "Subquery",
    "Table", "Column", "Identifier", "Star", "Alias", "Aliases", "Literal", "Boolean", "Null",
    "Paren", "Tuple", "Distinct", "Window", "WindowSpec", "Qualify", "Filter", "Lateral",
    "Values", "Interval", "Var", "DataType", "DataTypeParam", "Bracket", "Slice", "Any", "All",
    "Exists", "In", "Between", "Not", "Neg", "Is", "Case", "If", "Cast", "TryCast",
    "Unnest", "Cube", "Rollup", "GroupingSets", "Array", "ColumnDef", "IgnoreNulls",
    "RespectNulls", "HavingMax", "WithinGroup", "TableSample", "Struct", "Kwarg", "Escape",
    "Collate", "Dot", "Pseudocolumn", "And", "Or", "Xor",
)

# Typed functions sqlglot knows: pure computations over their arguments (no relation access,
# no session or data change, no waiting). Shared by every dialect: sqlglot generates each as the
# dialect's own spelling of the same standard function.
_FUNCTIONS = _classes(
    # aggregates
    "Count", "CountIf", "Sum", "Avg", "Min", "Max", "Stddev", "StddevPop", "StddevSamp",
    "Variance", "VariancePop", "ArrayAgg", "GroupConcat", "ApproxDistinct", "Corr", "CovarPop",
    "CovarSamp", "Median", "PercentileCont", "PercentileDisc", "LogicalAnd", "LogicalOr",
    "AnyValue", "First", "Last", "ArrayUniqueAgg", "BitwiseAndAgg", "BitwiseOrAgg",
    "BitwiseXorAgg", "Quantile", "ApproxQuantile",
    # window
    "RowNumber", "Rank", "DenseRank", "Ntile", "PercentRank", "CumeDist", "Lag", "Lead",
    "FirstValue", "LastValue", "NthValue",
    # conditional
    "Coalesce", "Nullif", "Greatest", "Least", "Case", "If", "Cast", "TryCast",
    # math
    "Abs", "Ceil", "Floor", "Round", "Sqrt", "Cbrt", "Exp", "Ln", "Log", "Log2", "Log10", "Pow",
    "Sign", "Trunc", "Pi", "Radians", "Degrees", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
    "Atan2", "SafeDivide", "IntDiv",
    # text
    "Lower", "Upper", "Length", "Substring", "Trim", "Concat", "ConcatWs", "Left", "Right",
    "Replace", "StrPosition", "Pad", "Initcap", "Reverse", "Repeat", "MD5", "MD5Digest", "SHA",
    "SHA2", "Ascii", "Chr", "Unicode", "RegexpLike", "RegexpILike", "RegexpReplace",
    "RegexpExtract", "RegexpSplit", "SplitPart", "StartsWith", "EndsWith", "Translate", "Hex",
    "Unhex", "LowerHex", "Split", "StringToArray", "ArrayToString", "ToBase64", "FromBase64",
    "Space", "Contains", "Format", "BitLength", "ByteLength",
    # dates and times
    "Extract", "DateTrunc", "TimestampTrunc", "TimeTrunc", "DatetimeTrunc", "CurrentDate",
    "CurrentTimestamp", "CurrentTime", "CurrentDatetime", "DateAdd", "DateSub", "DateDiff",
    "DatetimeAdd", "DatetimeSub", "DatetimeDiff", "TimestampAdd", "TimestampSub",
    "TimestampDiff", "TimeAdd", "TimeSub", "TimeDiff", "TsOrDsAdd", "TsOrDsDiff", "TsOrDsToDate",
    "TsOrDsToTimestamp", "StrToDate", "StrToTime", "StrToUnix", "TimeToStr", "TimeStrToTime",
    "TimeStrToDate", "TimeStrToUnix", "TimeToUnix", "UnixToTime", "UnixToStr", "UnixToTimeStr",
    "ToChar", "ToNumber", "Year", "Month", "Day", "DayOfWeek", "DayOfWeekIso", "DayOfMonth",
    "DayOfYear", "WeekOfYear", "Week", "Quarter", "Hour", "Minute", "Second", "LastDay",
    "AddMonths", "MonthsBetween", "Date", "DateStrToDate", "DateToDateStr", "DateToDi",
    "DiToDate", "DateFromParts", "TimeFromParts", "TimestampFromParts", "MakeInterval",
    "GenerateSeries", "ExplodingGenerateSeries", "GenerateDateArray", "Timestamp",
    "CurrentTimestampLTZ", "JustifyDays", "JustifyHours", "JustifyInterval", "Datetime",
    # arrays and JSON values (of a column, never of a relation)
    "ArraySize", "ArrayContains", "ArrayContainsAll", "ArrayOverlaps", "ArrayConcat",
    "ArrayFilter", "ArrayFirst", "ArrayLast", "ArraySlice", "ArraySort", "ArrayReverse",
    "ArrayDistinct", "JSONExtract", "JSONExtractScalar", "JSONBExtract", "JSONBExtractScalar",
    "JSONBContains", "JSONArrayContains", "JSONFormat", "ParseJSON", "JSONExtractArray",
    "JSONValueArray", "JSONBExists", "JSONExists", "JSONObject", "JSONArray", "JSONArrayAgg",
    "JSONObjectAgg", "JSONBObjectAgg", "Explode", "Posexplode", "ToArray",
    "Grouping", "Stuff",
)

# Functions sqlglot keeps as anonymous calls, by dialect (lower case, as the source names them).
_ANONYMOUS = {
    "postgres": frozenset({
        "date_part", "to_date", "to_timestamp", "to_number", "btrim", "ltrim", "rtrim",
        "char_length", "character_length", "octet_length", "bit_length", "strpos", "lpad",
        "rpad", "repeat", "md5", "width_bucket", "age", "make_date", "make_time",
        "make_timestamp", "make_timestamptz", "date_bin", "isfinite", "string_agg", "bool_and",
        "bool_or", "every", "array_length", "cardinality", "array_position", "array_positions",
        "array_remove", "array_replace", "array_upper", "array_lower", "array_dims",
        "array_ndims", "array_cat", "array_append", "array_prepend", "regexp_match",
        "regexp_matches", "regexp_count", "regexp_instr", "regexp_substr",
        "regexp_split_to_array", "div", "mod", "power", "ceiling", "scale", "min_scale",
        "trim_scale", "gcd", "lcm", "factorial", "to_hex", "encode", "decode", "quote_literal",
        "quote_nullable", "starts_with", "sha224", "sha256", "sha384", "sha512", "jsonb_typeof",
        "json_typeof", "jsonb_array_length", "json_array_length", "jsonb_extract_path",
        "jsonb_extract_path_text", "json_extract_path", "json_extract_path_text",
        "jsonb_build_object", "json_build_object", "jsonb_build_array", "json_build_array",
        "jsonb_agg", "json_agg", "jsonb_object_agg", "json_object_agg", "to_json", "to_jsonb",
        "row_to_json", "array_to_json", "jsonb_strip_nulls", "jsonb_pretty", "num_nonnulls",
        "num_nulls", "percentile_cont", "percentile_disc", "mode", "regr_slope",
        "regr_intercept", "regr_r2", "regr_count", "var_pop", "var_samp", "stddev_pop",
        "stddev_samp", "random", "timeofday", "localtime", "localtimestamp", "now",
        "clock_timestamp", "statement_timestamp", "transaction_timestamp", "justify_days",
        "justify_hours", "justify_interval", "overlay", "unistr", "normalize", "casefold",
        "log10", "ln", "cot", "sind", "cosd", "tand", "asind", "acosd", "atand", "sinh", "cosh",
        "tanh", "erf", "erfc", "bit_count", "get_bit", "get_byte", "length", "substr",
        "split_part", "initcap", "translate", "reverse", "left", "right", "concat",
        "concat_ws", "format", "lower", "upper", "replace", "abs", "floor", "ceil", "round",
        "trunc", "sqrt", "cbrt", "exp", "sign", "pi", "greatest", "least", "coalesce",
        "nullif", "generate_series", "unnest", "date_trunc", "extract",
    }),
    "mysql": frozenset({
        "date_format", "str_to_date", "datediff", "timestampdiff", "timestampadd", "ifnull",
        "if", "substring_index", "lpad", "rpad", "locate", "instr", "char_length",
        "character_length", "octet_length", "length", "ltrim", "rtrim", "md5", "sha1", "sha2",
        "dayofweek", "dayofmonth", "dayofyear", "weekday", "week", "weekofyear", "yearweek",
        "quarter", "hour", "minute", "second", "microsecond", "last_day", "date_add",
        "date_sub", "adddate", "subdate", "addtime", "subtime", "curdate", "curtime", "now",
        "utc_date", "utc_time", "utc_timestamp", "unix_timestamp", "from_unixtime",
        "time_to_sec", "sec_to_time", "makedate", "maketime", "period_add", "period_diff",
        "to_days", "from_days", "to_seconds", "truncate", "mod", "pow", "power", "ceiling",
        "log2", "log10", "ln", "std", "stddev", "stddev_pop", "stddev_samp", "variance",
        "var_pop", "var_samp", "bit_and", "bit_or", "bit_xor", "bit_count", "json_extract",
        "json_unquote", "json_value", "json_length", "json_type", "json_valid", "json_keys",
        "json_contains", "json_object", "json_array", "json_arrayagg", "json_objectagg",
        "field", "elt", "hex", "unhex", "conv", "bin", "oct", "format", "space", "strcmp",
        "soundex", "crc32", "to_base64", "from_base64", "lcase", "ucase", "mid", "position",
        "regexp_replace", "regexp_substr", "regexp_instr", "lower", "upper", "concat",
        "concat_ws", "left", "right", "replace", "reverse", "repeat", "abs", "floor", "ceil",
        "round", "sqrt", "exp", "sign", "pi", "greatest", "least", "coalesce", "nullif",
        "year", "month", "day", "dayname", "monthname", "date", "time", "timestamp",
        "group_concat", "median", "percentile_cont", "percentile_disc", "rand", "degrees",
        "radians", "sin", "cos", "tan", "cot", "asin", "acos", "atan", "atan2", "log",
        "char", "ord", "ascii", "insert", "quote", "trim", "substr", "substring",
    }),
    "sqlite": frozenset({
        "abs", "coalesce", "ifnull", "iif", "instr", "length", "lower", "upper", "ltrim",
        "rtrim", "trim", "replace", "round", "substr", "substring", "printf", "format", "date",
        "time", "datetime", "julianday", "strftime", "unixepoch", "timediff", "total",
        "group_concat", "string_agg", "hex", "unhex", "unicode", "char", "nullif", "max", "min",
        "sign", "likely", "unlikely", "likelihood", "typeof", "octet_length", "concat",
        "concat_ws", "mod", "pow", "power", "sqrt", "exp", "ln", "log", "log2", "log10",
        "floor", "ceil", "ceiling", "trunc", "pi", "random", "json_extract", "json_type",
        "json_array_length", "json_valid", "json_object", "json_array", "json_group_array",
        "json_group_object", "soundex",
    }),
}
_ANONYMOUS["tsql"] = frozenset()
_ANONYMOUS["oracle"] = frozenset()
_ANONYMOUS["duckdb"] = frozenset()

# Built-in scalar types a cast may target; a user-defined type runs its own input function.
_CAST_TYPES = frozenset(
    getattr(exp.DataType.Type, n) for n in (
        "BIGINT", "INT", "SMALLINT", "TINYINT", "MEDIUMINT", "UBIGINT", "UINT", "USMALLINT",
        "UTINYINT", "UMEDIUMINT", "DECIMAL", "BIGDECIMAL", "DOUBLE", "FLOAT", "MONEY",
        "SMALLMONEY", "TEXT", "VARCHAR", "CHAR", "NCHAR", "NVARCHAR", "BPCHAR", "NAME",
        "MEDIUMTEXT", "LONGTEXT", "TINYTEXT", "DATE", "DATE32", "DATETIME", "DATETIME64",
        "TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMPLTZ", "TIMESTAMPNTZ", "TIME", "TIMETZ",
        "INTERVAL", "BOOLEAN", "BIT", "JSON", "JSONB", "UUID", "BINARY", "VARBINARY", "BLOB",
        "MEDIUMBLOB", "LONGBLOB", "TINYBLOB", "YEAR", "ARRAY", "INET", "CIDR",
        "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "UNKNOWN", "NULL", "INT128", "INT256",
        "UINT128", "UINT256", "DECIMAL32", "DECIMAL64", "DECIMAL128", "DECIMAL256",
    ) if hasattr(exp.DataType.Type, n))


def _refuse(what: str, node: exp.Expression) -> InvalidMapping:
    where = span(node)
    at = f" (at character {where[0] + 1})" if where is not None else ""
    return InvalidMapping(f"sql= may not use {what}{at}: a sql= mapping is one read-only query "
                          "over tables and views with built-in functions; map the table itself, "
                          "or ask the ldw administrator if a function you need is missing")


def _function_name(node: exp.Func) -> str:
    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def check_query_nodes(tree: exp.Expression, dialect: str | None) -> None:
    """Refuse ``tree`` unless every node is allowed query syntax, function or cast target."""
    anonymous = _ANONYMOUS.get(dialect or "", frozenset())
    for node in tree.walk():
        kind = type(node)
        if isinstance(node, exp.Anonymous):
            if node.name.lower() not in anonymous:
                raise _refuse(f"function {node.name}()", node)
            if isinstance(node.parent, exp.Dot):
                raise _refuse(f"the schema-qualified function {node.parent.sql()}", node.parent)
            continue
        if isinstance(node, exp.Func) and kind not in _STRUCTURE:
            if kind not in _FUNCTIONS:
                raise _refuse(f"function {_function_name(node)}()", node)
            if isinstance(node.parent, exp.Dot):
                raise _refuse(f"the schema-qualified function {node.parent.sql()}", node.parent)
            continue
        if kind is exp.DataType:
            if node.this not in _CAST_TYPES:
                raise _refuse(f"the type {node.sql()}", node)
            continue
        if isinstance(node, exp.DataType):  # subclasses: object identifiers (regclass), ...
            raise _refuse(f"the type {node.sql()}", node)
        if kind in _STRUCTURE:
            if isinstance(node, exp.Select) and node.args.get("locks"):
                raise _refuse("FOR UPDATE/SHARE", node)
            if isinstance(node, exp.Select) and node.args.get("into"):
                raise _refuse("SELECT INTO", node)
            continue
        if isinstance(node, exp.Binary | exp.Unary | exp.Predicate) and not isinstance(
                node, exp.Operator):  # OPERATOR(schema.op) names a function of its own
            continue  # operators sqlglot parses are the built-in ones: =, +, LIKE, ||, ...
        raise _refuse(f"{node_name(node)} ({node.sql()[:60]!r})", node)
