//! T-SQL to SQLite: every rule the test server applies, in one place. It understands exactly
//! the statement shapes the SQL Server sink, tiberius and FreeTDS (`tsql`, `freebcp`) send, and
//! passes everything else to SQLite after rules 1 and 2.
//!
//! 1. Identifiers: `[x]` becomes `"x"`; the `dbo.` schema prefix is dropped (every table lives
//!    in `dbo`); `#name` becomes `"#name"`, and `CREATE TABLE #name` a SQLite TEMP table;
//!    `N'..'` becomes `'..'`.
//! 2. `SELECT TOP n ...` / `SELECT TOP (n) ...` becomes `SELECT ... LIMIT n`.
//! 3. `SELECT [TOP 0] a, b INTO #stage FROM t` creates TEMP table `"#stage"` with those columns'
//!    declared types and NOT NULL flags copied from `t` (executed by the session).
//! 4. `DROP TABLE IF EXISTS #stage` is native once rule 1 applied.
//! 5. `IF OBJECT_ID(N'dbo.t', N'U') IS NULL CREATE TABLE ...` becomes `CREATE TABLE IF NOT
//!    EXISTS ...`. In CREATE TABLE: `(max)` becomes `(-1)` (reported back as max);
//!    `decimal(p,s)` / `numeric(p,s)` become `decimal text(p,s)` (TEXT affinity keeps the
//!    canonical decimal text); `CLUSTERED` / `NONCLUSTERED` are dropped;
//!    `CONSTRAINT PK_x PRIMARY KEY (a, b)` is native and its name is used in error 2627.
//! 6. `SELECT name FROM sys.columns WHERE object_id = OBJECT_ID(@P1) AND is_nullable = 0 ...`
//!    is answered from `PRAGMA table_info`: NOT NULL columns without a default that are not
//!    identity (`INTEGER PRIMARY KEY`).
//! 7. `SELECT @@VERSION` returns a string naming this test server; `SET ...` is a no-op,
//!    except FreeTDS's `SET FMTONLY ON select ... SET FMTONLY OFF`, which runs the select
//!    with `LIMIT 0` (metadata only).
//! 8. Transactions: `BEGIN TRAN[SACTION]`, `COMMIT [TRAN[SACTION]]`, `ROLLBACK [TRAN[SACTION]]`,
//!    `SAVE TRAN[SACTION] name`, `ROLLBACK TRAN[SACTION] name`,
//!    `IF @@TRANCOUNT > 0 ROLLBACK TRAN[SACTION]`, `IF @@ROWCOUNT = n COMMIT [TRAN[SACTION]]`
//!    (executed by the session).
//! 9. `INSERT BULK t ([a] type, ...) [WITH (...)]` starts a bulk load into those columns.
//! 10. `INSERT INTO t (a, b) VALUES (x, y)[, (...)]`: every value that is a parameter or a
//!     literal is converted to its column's declared type before binding (lengths, ranges,
//!     canonical storage form), like a bulk-loaded value.
//! 11. Table hints `WITH (UPDLOCK, HOLDLOCK, ...)` are dropped. Inside a transaction, a
//!     statement with a hint that holds its locks until the transaction ends (UPDLOCK,
//!     HOLDLOCK, SERIALIZABLE, REPEATABLEREAD, XLOCK, TABLOCKX) takes the session's writer
//!     lock first, as a write would ([`holds_locks`]): the test server has one writer at a
//!     time where SQL Server would lock rows, which is stricter, never looser.
//! 12. `IF <condition> <statement>` (other than rules 5 and 8): the condition is evaluated by
//!     SQLite (`EXISTS (...)`, `NOT EXISTS (...)`, `... IS NULL`), then the statement runs if
//!     it holds (executed by the session). `COL_LENGTH(N't', N'c')` is non-NULL when table `t`
//!     has column `c` (its value is not a length). In CREATE TABLE and `ALTER TABLE t ADD c
//!     type`, rule 5's type rewrites apply, and `COLLATE x` is dropped for a binary or
//!     case-sensitive collation (`_BIN`, `_BIN2`, `_CS_`), else becomes `COLLATE NOCASE`.
//! 13. `THROW number, N'message', state` fails with that error (class 16) and ends the batch.
//!
//! Statements in a batch are separated by `;`, and also by a new line that starts with
//! BEGIN, COMMIT, ROLLBACK, SAVE, SET or IF (outside quotes and brackets).

/// A lexical token of T-SQL.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Space(String),
    Word(String),
    /// `[x]` or `"x"`: the name without quotes.
    Quoted(String),
    /// `'..'` or `N'..'`: the raw content between the quotes (`''` kept).
    Str(String),
    Num(String),
    /// `@x` or `@@x`.
    Var(String),
    /// `#x` or `##x`.
    Temp(String),
    Punct(char),
}

impl Tok {
    fn is_space(&self) -> bool {
        matches!(self, Tok::Space(_))
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(word))
    }

    /// The name, if this is an identifier (plain, quoted or temp).
    fn ident(&self) -> Option<String> {
        match self {
            Tok::Word(w) => Some(w.clone()),
            Tok::Quoted(q) => Some(q.clone()),
            Tok::Temp(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// The token in T-SQL spelling (quoted names bracketed), to re-lex later.
    fn render_tsql(&self) -> String {
        match self {
            Tok::Quoted(q) => format!("[{}]", q.replace(']', "]]")),
            Tok::Str(s) => format!("N'{s}'"),
            other => other.render(),
        }
    }

    fn render(&self) -> String {
        match self {
            Tok::Space(s) | Tok::Word(s) | Tok::Num(s) | Tok::Var(s) => s.clone(),
            Tok::Quoted(q) | Tok::Temp(q) => format!("\"{}\"", q.replace('"', "\"\"")),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Punct(c) => c.to_string(),
        }
    }
}

fn lex(sql: &str) -> Vec<Tok> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let take_while = |i: &mut usize, f: &dyn Fn(char) -> bool| {
        let start = *i;
        while *i < chars.len() && f(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            out.push(Tok::Space(take_while(&mut i, &|c| c.is_whitespace())));
        } else if c == '-' && next == Some('-') {
            take_while(&mut i, &|c| c != '\n');
            out.push(Tok::Space(" ".into()));
        } else if c == '\'' || ((c == 'N' || c == 'n') && next == Some('\'')) {
            i += if c == '\'' { 1 } else { 2 };
            let mut s = String::new();
            while i < chars.len() {
                if chars[i] == '\'' && chars.get(i + 1) == Some(&'\'') {
                    s.push_str("''");
                    i += 2;
                } else if chars[i] == '\'' {
                    i += 1;
                    break;
                } else {
                    s.push(chars[i]);
                    i += 1;
                }
            }
            out.push(Tok::Str(s));
        } else if c == '[' || c == '"' {
            let close = if c == '[' { ']' } else { '"' };
            i += 1;
            let mut s = String::new();
            while i < chars.len() {
                if chars[i] == close && chars.get(i + 1) == Some(&close) {
                    s.push(close);
                    i += 2;
                } else if chars[i] == close {
                    i += 1;
                    break;
                } else {
                    s.push(chars[i]);
                    i += 1;
                }
            }
            out.push(Tok::Quoted(s));
        } else if c == '@' {
            out.push(Tok::Var(take_while(&mut i, &|c| word_char(c) || c == '@')));
        } else if c == '#' {
            out.push(Tok::Temp(take_while(&mut i, &|c| word_char(c) || c == '#')));
        } else if c.is_ascii_digit() || (c == '.' && next.is_some_and(|n| n.is_ascii_digit())) {
            out.push(Tok::Num(take_while(&mut i, &|c| {
                c.is_ascii_alphanumeric() || c == '.'
            })));
        } else if word_char(c) {
            out.push(Tok::Word(take_while(&mut i, &word_char)));
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// Splits a batch into statements (see the module doc for the separators).
pub fn split_batch(batch: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut line_start = true;
    for tok in lex(batch) {
        let starts_statement = line_start
            && ["BEGIN", "COMMIT", "ROLLBACK", "SAVE", "SET", "IF"]
                .iter()
                .any(|w| tok.is_word(w));
        if tok == Tok::Punct(';') || starts_statement {
            if !current.trim().is_empty() {
                statements.push(std::mem::take(&mut current));
            }
            current.clear();
            if tok == Tok::Punct(';') {
                continue;
            }
        }
        if let Tok::Space(s) = &tok {
            if s.contains('\n') {
                line_start = true;
            }
        } else {
            line_start = false;
        }
        current.push_str(&tok.render_tsql());
    }
    if !current.trim().is_empty() {
        statements.push(current);
    }
    statements
}

/// What one statement asks for.
#[derive(Debug)]
pub enum Statement {
    /// `SET ...`
    Noop,
    /// `SELECT @@VERSION`
    Version,
    /// `BEGIN TRAN`
    Begin,
    /// `COMMIT`
    Commit,
    /// `ROLLBACK [TRAN [name]]`; `only_if_open` for `IF @@TRANCOUNT > 0 ROLLBACK`.
    Rollback {
        /// The savepoint to roll back to, if named.
        savepoint: Option<String>,
        /// Do nothing outside a transaction instead of error 3903.
        only_if_open: bool,
    },
    /// `IF @@ROWCOUNT = n COMMIT`: commits if the previous statement affected `n` rows.
    CommitIfRowcount(u64),
    /// `SAVE TRAN name`
    Save(String),
    /// `IF <condition> <statement>` (rule 12).
    If {
        /// The condition, as a SQLite expression.
        condition: String,
        /// The statement to run if it holds, in T-SQL.
        then: String,
    },
    /// `THROW number, message, state` (rule 13).
    Throw {
        /// The error number.
        number: u32,
        /// The message.
        message: String,
        /// The state.
        state: u8,
    },
    /// `SELECT .. INTO #target FROM source` (rule 3).
    SelectInto {
        /// The selected column names; empty for `*`.
        columns: Vec<String>,
        /// The source table.
        source: String,
        /// The new temp table.
        target: String,
    },
    /// The `sys.columns` NOT NULL query (rule 6); the argument of OBJECT_ID: `@P1` or a name.
    NotNullColumns(String),
    /// `INSERT BULK`
    InsertBulk {
        /// Target table.
        table: String,
        /// Target columns, in the order the rows carry them.
        columns: Vec<String>,
    },
    /// `INSERT INTO t (cols) VALUES (...)` (rule 10).
    Insert {
        /// Target table.
        table: String,
        /// Target columns.
        columns: Vec<String>,
        /// The SQLite text up to and including `VALUES`.
        head: String,
        /// Each row's value expressions, translated.
        rows: Vec<Vec<String>>,
    },
    /// Anything else, translated by rules 1, 2 and 5.
    Sql {
        /// SQLite text.
        sql: String,
        /// Tables named after FROM / JOIN (for result column metadata).
        tables: Vec<String>,
        /// Per select-list item: the column it names, if it is a plain column reference
        /// (`None` for expressions; a lone `*` gives an empty list and `star`).
        items: Vec<Option<String>>,
        /// The select list contains `*`.
        star: bool,
    },
}

/// Significant tokens (no spaces).
fn significant(toks: &[Tok]) -> Vec<Tok> {
    toks.iter().filter(|t| !t.is_space()).cloned().collect()
}

/// Renders tokens with rule 1 (identifiers, `dbo.`, literals) and rule 2 (TOP).
fn render(toks: &[Tok], create_table: bool) -> String {
    let mut out = String::new();
    let mut limit = None;
    let mut i = 0;
    let next_sig = |from: usize| (from..toks.len()).find(|&j| !toks[j].is_space());
    while i < toks.len() {
        let tok = &toks[i];
        // dbo. prefix
        if tok.ident().is_some_and(|n| n.eq_ignore_ascii_case("dbo"))
            && next_sig(i + 1).is_some_and(|j| toks[j] == Tok::Punct('.'))
        {
            i = next_sig(i + 1).expect("dot") + 1;
            while i < toks.len() && toks[i].is_space() {
                i += 1;
            }
            continue;
        }
        // SELECT TOP n / TOP (n)
        if tok.is_word("SELECT")
            && let Some(j) = next_sig(i + 1).filter(|&j| toks[j].is_word("TOP"))
        {
            let k = next_sig(j + 1);
            let (n, end) = match k.map(|k| &toks[k]) {
                Some(Tok::Num(n)) => (Some(n.clone()), k),
                Some(Tok::Punct('(')) => {
                    let n = next_sig(k.expect("k") + 1);
                    let close = n.and_then(|n| next_sig(n + 1));
                    match (n.map(|n| &toks[n]), close.map(|c| &toks[c])) {
                        (Some(Tok::Num(n)), Some(Tok::Punct(')'))) => (Some(n.clone()), close),
                        _ => (None, None),
                    }
                }
                _ => (None, None),
            };
            if let (Some(n), Some(end)) = (n, end) {
                limit = Some(n);
                out.push_str("SELECT");
                i = end + 1;
                continue;
            }
        }
        // Table hints (rule 11).
        if tok.is_word("WITH")
            && let Some(end) = table_hints(toks, i).map(|(_, end)| end)
        {
            i = end;
            continue;
        }
        // COL_LENGTH(N'table', N'column') (rule 12)
        if tok.is_word("COL_LENGTH")
            && let Some((table, column, end)) = col_length(toks, i)
        {
            out.push_str(&format!(
                "(SELECT 1 FROM pragma_table_info({}) WHERE name = {} COLLATE NOCASE)",
                sql_literal(&table),
                sql_literal(&column)
            ));
            i = end;
            continue;
        }
        if create_table {
            if tok.is_word("COLLATE")
                && let Some(j) = next_sig(i + 1)
                && let Some(name) = toks[j].ident()
            {
                let upper = name.to_ascii_uppercase();
                let binary =
                    upper.ends_with("_BIN") || upper.ends_with("_BIN2") || upper.contains("_CS_");
                if !binary {
                    out.push_str("COLLATE NOCASE");
                }
                i = j + 1;
                continue;
            }
            if tok.is_word("CLUSTERED") || tok.is_word("NONCLUSTERED") {
                i += 1;
                continue;
            }
            if tok.is_word("max")
                && i > 0
                && toks[i - 1] == Tok::Punct('(')
                && toks.get(i + 1) == Some(&Tok::Punct(')'))
            {
                out.push_str("-1");
                i += 1;
                continue;
            }
            if (tok.is_word("decimal") || tok.is_word("numeric"))
                && next_sig(i + 1).is_some_and(|j| toks[j] == Tok::Punct('('))
            {
                out.push_str("decimal text");
                i += 1;
                continue;
            }
            if tok.is_word("TABLE")
                && next_sig(i + 1).is_some_and(|j| matches!(toks[j], Tok::Temp(_)))
                && !out.trim_start().to_ascii_uppercase().starts_with("ALTER")
            {
                out.push_str("TEMP TABLE");
                i += 1;
                continue;
            }
        }
        out.push_str(&tok.render());
        i += 1;
    }
    if let Some(n) = limit {
        out = format!("{} LIMIT {n}", out.trim_end());
    }
    out
}

/// Hints that hold their locks until the transaction ends.
const HOLDING_HINTS: [&str; 6] = [
    "UPDLOCK",
    "HOLDLOCK",
    "SERIALIZABLE",
    "REPEATABLEREAD",
    "XLOCK",
    "TABLOCKX",
];

/// Every table hint rule 11 knows.
const TABLE_HINTS: [&str; 16] = [
    "UPDLOCK",
    "HOLDLOCK",
    "SERIALIZABLE",
    "REPEATABLEREAD",
    "XLOCK",
    "TABLOCKX",
    "TABLOCK",
    "ROWLOCK",
    "PAGLOCK",
    "NOLOCK",
    "READUNCOMMITTED",
    "READCOMMITTED",
    "READCOMMITTEDLOCK",
    "READPAST",
    "NOWAIT",
    "FORCESEEK",
];

/// `WITH (hint, ...)` at `toks[i]`: the hints and the index after the closing parenthesis.
fn table_hints(toks: &[Tok], i: usize) -> Option<(Vec<String>, usize)> {
    let mut j = i + 1;
    let next = |j: &mut usize| {
        while *j < toks.len() && toks[*j].is_space() {
            *j += 1;
        }
        let tok = toks.get(*j).cloned();
        *j += 1;
        tok
    };
    if next(&mut j)? != Tok::Punct('(') {
        return None;
    }
    let mut hints = Vec::new();
    loop {
        match next(&mut j)? {
            Tok::Word(w) if TABLE_HINTS.iter().any(|h| h.eq_ignore_ascii_case(&w)) => {
                hints.push(w.to_ascii_uppercase())
            }
            _ => return None,
        }
        match next(&mut j)? {
            Tok::Punct(',') => {}
            Tok::Punct(')') => return Some((hints, j)),
            _ => return None,
        }
    }
}

/// Whether `statement` has a table hint that holds its locks until the transaction ends
/// (rule 11).
pub fn holds_locks(statement: &str) -> bool {
    let toks = lex(statement);
    (0..toks.len()).any(|i| {
        toks[i].is_word("WITH")
            && table_hints(&toks, i)
                .is_some_and(|(hints, _)| hints.iter().any(|h| HOLDING_HINTS.contains(&h.as_str())))
    })
}

/// `COL_LENGTH(N'table', N'column')` at `toks[i]`: the table's own name (schema and brackets
/// removed), the column, and the index after the closing parenthesis.
fn col_length(toks: &[Tok], i: usize) -> Option<(String, String, usize)> {
    let sig: Vec<(usize, &Tok)> = toks
        .iter()
        .enumerate()
        .skip(i + 1)
        .filter(|(_, t)| !t.is_space())
        .take(5)
        .collect();
    match sig.as_slice() {
        [
            (_, Tok::Punct('(')),
            (_, Tok::Str(table)),
            (_, Tok::Punct(',')),
            (_, Tok::Str(column)),
            (end, Tok::Punct(')')),
        ] => {
            let table = table.replace("''", "'");
            let own = table.rsplit('.').next().unwrap_or("");
            let own = own.trim_matches(['[', ']', '"']).to_string();
            Some((own, column.replace("''", "'"), end + 1))
        }
        _ => None,
    }
}

/// A SQLite string literal.
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Words that start the statement of an `IF` (rule 12).
const STATEMENT_WORDS: [&str; 17] = [
    "INSERT", "UPDATE", "DELETE", "MERGE", "SELECT", "THROW", "ALTER", "CREATE", "DROP",
    "TRUNCATE", "BEGIN", "COMMIT", "ROLLBACK", "SAVE", "SET", "EXEC", "PRINT",
];

/// `IF <condition> <statement>` (rule 12): the condition's tokens and the statement's, split
/// at the first statement word outside parentheses.
fn split_if(toks: &[Tok]) -> Option<(&[Tok], &[Tok])> {
    let start = toks.iter().position(|t| !t.is_space())?;
    if !toks[start].is_word("IF") {
        return None;
    }
    let mut depth = 0i32;
    for (i, tok) in toks.iter().enumerate().skip(start + 1) {
        match tok {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => depth -= 1,
            t if depth == 0 && STATEMENT_WORDS.iter().any(|w| t.is_word(w)) => {
                let condition = &toks[start + 1..i];
                return (!significant(condition).is_empty()).then_some((condition, &toks[i..]));
            }
            _ => {}
        }
    }
    None
}

/// Reads a possibly qualified name at `sig[i..]`; returns the last part and the next index.
fn qualified_name(sig: &[Tok], mut i: usize) -> Option<(String, usize)> {
    let mut name = sig.get(i)?.ident()?;
    i += 1;
    while sig.get(i) == Some(&Tok::Punct('.')) {
        name = sig.get(i + 1)?.ident()?;
        i += 2;
    }
    Some((name, i))
}

/// Splits `sig[start..]` (just after an opening parenthesis) at top-level commas up to the
/// matching close; returns the parts and the index after the close.
fn paren_list(sig: &[Tok], start: usize) -> (Vec<Vec<Tok>>, usize) {
    let mut parts = vec![Vec::new()];
    let mut depth = 0;
    let mut i = start;
    while i < sig.len() {
        match &sig[i] {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') if depth == 0 => return (parts, i + 1),
            Tok::Punct(')') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                parts.push(Vec::new());
                i += 1;
                continue;
            }
            _ => {}
        }
        parts.last_mut().expect("part").push(sig[i].clone());
        i += 1;
    }
    (parts, i)
}

/// Renders a token list (significant tokens) back to SQLite text, single-spaced.
fn render_sig(toks: &[Tok]) -> String {
    let spaced: Vec<Tok> = toks
        .iter()
        .flat_map(|t| [t.clone(), Tok::Space(" ".into())])
        .collect();
    render(&spaced, false).trim().to_string()
}

/// Classifies and translates one statement.
pub fn translate(statement: &str) -> Statement {
    let toks = lex(statement);
    let sig = significant(&toks);
    let word = |i: usize, w: &str| sig.get(i).is_some_and(|t| t.is_word(w));
    let tran_word = |i: usize| word(i, "TRAN") || word(i, "TRANSACTION") || word(i, "WORK");

    if word(0, "SET") && word(1, "FMTONLY") && word(2, "ON") {
        // FreeTDS: `SET FMTONLY ON select ... SET FMTONLY OFF` wants metadata only.
        let on = toks.iter().position(|t| t.is_word("ON")).expect("ON") + 1;
        let off = toks
            .iter()
            .rposition(|t| t.is_word("SET"))
            .filter(|&i| i > on)
            .unwrap_or(toks.len());
        let inner: String = toks[on..off].iter().map(Tok::render_tsql).collect();
        if let Statement::Sql {
            sql,
            tables,
            items,
            star,
        } = translate(&inner)
        {
            let sql = format!("SELECT * FROM ({sql}) LIMIT 0");
            return Statement::Sql {
                sql,
                tables,
                items,
                star,
            };
        }
    }
    if word(0, "SET") {
        return Statement::Noop;
    }
    if word(0, "BEGIN") && tran_word(1) {
        return Statement::Begin;
    }
    if word(0, "COMMIT") {
        return Statement::Commit;
    }
    if word(0, "ROLLBACK") {
        let name = if tran_word(1) {
            sig.get(2).and_then(Tok::ident)
        } else {
            None
        };
        return Statement::Rollback {
            savepoint: name,
            only_if_open: false,
        };
    }
    if word(0, "SAVE")
        && tran_word(1)
        && let Some(name) = sig.get(2).and_then(Tok::ident)
    {
        return Statement::Save(name);
    }
    if word(0, "IF")
        && matches!(sig.get(1), Some(Tok::Var(v)) if v.eq_ignore_ascii_case("@@rowcount"))
        && matches!(sig.get(2), Some(Tok::Punct('=')))
        && let Some(Tok::Num(n)) = sig.get(3)
        && let Ok(n) = n.parse()
        && sig.get(4).is_some_and(|t| t.is_word("COMMIT"))
    {
        return Statement::CommitIfRowcount(n);
    }
    if word(0, "IF")
        && matches!(sig.get(1), Some(Tok::Var(v)) if v.eq_ignore_ascii_case("@@trancount"))
        && let Some(pos) = sig.iter().position(|t| t.is_word("ROLLBACK"))
    {
        let name = if tran_word(pos + 1) {
            sig.get(pos + 2).and_then(Tok::ident)
        } else {
            None
        };
        return Statement::Rollback {
            savepoint: name,
            only_if_open: true,
        };
    }
    if word(0, "IF") && word(1, "OBJECT_ID") {
        // IF OBJECT_ID(...) IS NULL CREATE TABLE ...
        if let Some(create) = toks.iter().position(|t| t.is_word("CREATE")) {
            let rest = &toks[create..];
            let sql = render(rest, true);
            let sql = sql.replacen("TABLE", "TABLE IF NOT EXISTS", 1);
            return Statement::Sql {
                sql,
                tables: Vec::new(),
                items: Vec::new(),
                star: false,
            };
        }
    }
    if word(0, "IF")
        && let Some((condition, then)) = split_if(&toks)
    {
        return Statement::If {
            condition: render(condition, false).trim().to_string(),
            then: then.iter().map(Tok::render_tsql).collect(),
        };
    }
    if word(0, "THROW")
        && let (Some(Tok::Num(number)), Some(Tok::Str(message)), Some(Tok::Num(state))) =
            (sig.get(1), sig.get(3), sig.get(5))
        && sig.get(2) == Some(&Tok::Punct(','))
        && sig.get(4) == Some(&Tok::Punct(','))
        && let (Ok(number), Ok(state)) = (number.parse(), state.parse())
    {
        return Statement::Throw {
            number,
            message: message.replace("''", "'"),
            state,
        };
    }
    if word(0, "INSERT")
        && word(1, "BULK")
        && let Some((table, i)) = qualified_name(&sig, 2)
    {
        let columns = if sig.get(i) == Some(&Tok::Punct('(')) {
            paren_list(&sig, i + 1)
                .0
                .iter()
                .filter_map(|part| part.first().and_then(Tok::ident))
                .collect()
        } else {
            Vec::new()
        };
        return Statement::InsertBulk { table, columns };
    }
    if word(0, "SELECT")
        && matches!(sig.get(1), Some(Tok::Var(v)) if v.eq_ignore_ascii_case("@@version"))
    {
        return Statement::Version;
    }
    if word(0, "SELECT")
        && sig.iter().any(|t| t.is_word("columns"))
        && sig.iter().any(|t| t.is_word("sys"))
        && let Some(pos) = sig
            .windows(2)
            .position(|w| w[0].is_word("OBJECT_ID") && w[1] == Tok::Punct('('))
    {
        let arg = match sig.get(pos + 2) {
            Some(Tok::Var(v)) => v.clone(),
            Some(Tok::Str(s)) => s.replace("''", "'"),
            _ => String::new(),
        };
        return Statement::NotNullColumns(arg);
    }
    if word(0, "SELECT")
        && let (Some(into), Some(from)) = (
            sig.iter().position(|t| t.is_word("INTO")),
            sig.iter().position(|t| t.is_word("FROM")),
        )
        && into < from
    {
        let mut start = 1;
        if word(1, "TOP") {
            start = if sig.get(2) == Some(&Tok::Punct('(')) {
                5
            } else {
                3
            };
        }
        let columns: Vec<String> = sig[start..into]
            .split(|t| *t == Tok::Punct(','))
            .filter_map(|item| item.last().and_then(Tok::ident))
            .collect();
        let target = qualified_name(&sig, into + 1).map(|(n, _)| n);
        let source = qualified_name(&sig, from + 1).map(|(n, _)| n);
        if let (Some(target), Some(source)) = (target, source) {
            return Statement::SelectInto {
                columns,
                source,
                target,
            };
        }
    }
    if word(0, "INSERT")
        && word(1, "INTO")
        && let Some((table, i)) = qualified_name(&sig, 2)
        && sig.get(i) == Some(&Tok::Punct('('))
    {
        let (cols, after) = paren_list(&sig, i + 1);
        if word(after, "VALUES") {
            let columns: Vec<String> = cols
                .iter()
                .filter_map(|c| c.first().and_then(Tok::ident))
                .collect();
            let mut rows = Vec::new();
            let mut j = after + 1;
            while sig.get(j) == Some(&Tok::Punct('(')) {
                let (values, next) = paren_list(&sig, j + 1);
                rows.push(values.iter().map(|v| render_sig(v)).collect());
                j = next;
                if sig.get(j) == Some(&Tok::Punct(',')) {
                    j += 1;
                }
            }
            if j >= sig.len() && !rows.is_empty() {
                let head = render_sig(&sig[..=after]);
                return Statement::Insert {
                    table,
                    columns,
                    head,
                    rows,
                };
            }
        }
    }
    let create_table = (word(0, "CREATE")
        && (word(1, "TABLE") || sig.iter().take(3).any(|t| t.is_word("TABLE"))))
        || (word(0, "ALTER") && word(1, "TABLE"));
    let sql = render(&toks, create_table);
    // Tables after FROM / JOIN, and the select list, for result metadata.
    let mut tables = Vec::new();
    for (i, t) in sig.iter().enumerate() {
        if (t.is_word("FROM") || t.is_word("JOIN"))
            && let Some((name, _)) = qualified_name(&sig, i + 1)
        {
            tables.push(name);
        }
    }
    let (mut items, mut star) = (Vec::new(), false);
    if word(0, "SELECT") {
        let mut start = 1;
        if word(1, "TOP") {
            start = if sig.get(2) == Some(&Tok::Punct('(')) {
                5
            } else {
                3
            };
        }
        if word(start, "DISTINCT") {
            start += 1;
        }
        let mut depth = 0;
        let mut end = start;
        while end < sig.len() {
            match &sig[end] {
                Tok::Punct('(') => depth += 1,
                Tok::Punct(')') => depth -= 1,
                t if depth == 0 && t.is_word("FROM") => break,
                _ => {}
            }
            end += 1;
        }
        let list = &sig[start.min(end)..end];
        let mut item = Vec::new();
        let mut depth = 0;
        for t in list.iter().chain(std::iter::once(&Tok::Punct(','))) {
            match t {
                Tok::Punct('(') => depth += 1,
                Tok::Punct(')') => depth -= 1,
                Tok::Punct(',') if depth == 0 => {
                    let is_star = item.last() == Some(&Tok::Punct('*'));
                    if is_star {
                        star = true;
                    } else {
                        items.push(plain_column(&item));
                    }
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(t.clone());
        }
    }
    Statement::Sql {
        sql,
        tables,
        items,
        star,
    }
}

/// The column a select-list item names, if it is `col`, `t.col`, `col AS alias`, `col alias`.
fn plain_column(item: &[Tok]) -> Option<String> {
    let (name, i) = qualified_name(item, 0)?;
    match &item[i..] {
        [] => Some(name),
        [alias] if alias.ident().is_some() => Some(name),
        [as_word, alias] if as_word.is_word("AS") && alias.ident().is_some() => Some(name),
        _ => None,
    }
}

/// Quotes a name for SQLite.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The name given to a table constraint in a CREATE TABLE text:
/// `CONSTRAINT <name> <keyword>` (keyword `PRIMARY`, `UNIQUE`, `CHECK`).
pub fn named_constraint(create_sql: &str, keyword: &str) -> Option<String> {
    let sig = significant(&lex(create_sql));
    sig.windows(3).find_map(|w| {
        (w[0].is_word("CONSTRAINT") && w[2].is_word(keyword))
            .then(|| w[1].ident())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tds_table_hints_are_dropped_and_holding_ones_noticed() {
        let text = "SELECT 1 FROM dbo.[t] WITH (UPDLOCK, HOLDLOCK) WHERE job = N'a'";
        assert!(holds_locks(text));
        assert!(!holds_locks("UPDATE t WITH (ROWLOCK) SET a = 1"));
        assert!(!holds_locks("WITH x AS (SELECT 1 AS a) SELECT a FROM x"));
        match translate(text) {
            Statement::Sql { sql, .. } => {
                assert_eq!(sql, "SELECT 1 FROM \"t\"  WHERE job = 'a'")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tds_if_splits_a_condition_from_its_statement() {
        let text = "IF NOT EXISTS (SELECT 1 FROM dbo.[t] WHERE a = N'x') \
                    INSERT INTO dbo.[t] (a) SELECT N'x' WHERE NOT EXISTS (SELECT 1 FROM t)";
        match translate(text) {
            Statement::If { condition, then } => {
                assert_eq!(condition, "NOT EXISTS (SELECT 1 FROM \"t\" WHERE a = 'x')");
                assert!(
                    then.starts_with("INSERT INTO dbo.[t] (a) SELECT N'x'"),
                    "{then}"
                );
            }
            other => panic!("{other:?}"),
        }
        match translate(
            "IF COL_LENGTH(N'dbo.[t]', N'c') IS NULL ALTER TABLE t ADD c decimal(9,2) NULL",
        ) {
            Statement::If { condition, then } => {
                assert_eq!(
                    condition,
                    "(SELECT 1 FROM pragma_table_info('t') WHERE name = 'c' COLLATE NOCASE) IS NULL"
                );
                match translate(&then) {
                    Statement::Sql { sql, .. } => {
                        assert_eq!(sql, "ALTER TABLE t ADD c decimal text(9,2) NULL")
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        match translate("THROW 51000, N'it''s over', 2") {
            Statement::Throw {
                number,
                message,
                state,
            } => assert_eq!((number, message.as_str(), state), (51000, "it's over", 2)),
            other => panic!("{other:?}"),
        }
    }
}
