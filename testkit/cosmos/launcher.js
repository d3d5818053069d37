#!/usr/bin/env node
// Test-only Cosmos DB server for stevedore's tests.
//
// It runs the stock @vercel/cosmosdb-server 1.0.1 (a Cosmos DB REST implementation kept in
// memory) over plain HTTP on loopback, and patches it at start-up, without editing anything
// inside node_modules, so that the Rust SDK azure_data_cosmos 1.1.0-beta.1 works against it:
//
//   1. The account document advertises http:// endpoints (the stock one always says https://,
//      and the SDK routes every request to the advertised endpoint).
//   2. Partition key range ids are strings, as Cosmos DB sends them (the stock ones are numbers,
//      with which the SDK cannot load the partition topology, so no container client opens).
//   3. A transactional batch takes its partition key from the x-ms-documentdb-partitionkey
//      header, where the SDK puts it (the stock server only reads a per-operation field).
//   4. Queries the SDK fans out per partition key range (no partition key header) are marked
//      cross-partition (the stock server rejects them with "missing partition keys"), and a
//      query with a partition key header sees only that partition's documents, as in Cosmos DB
//      (the stock server ignores the header and rejects the query unless its SQL filters on
//      the partition key).
//   5. Connections stay open between requests (the stock server answers `connection: close`).
//   6. Reading a document that does not exist answers 404 (the stock server crashes with 500),
//      and so does reading one without the partition key property (PartitionKey::UNDEFINED;
//      the stock server answers 400).
//   7. Queries take time linear in the container's size (the stock query engine's FROM clause
//      and its result cleanup copy the rows gathered so far once per row: quadratic, seconds
//      for one page of 20,000 documents).
//   8. A continuation is answered from the query's kept result (the stock server runs the
//      whole query again and scans for the position for every page: pages x container).
//
// and makes it as strict as Cosmos DB where a sink could go wrong unnoticed:
//
//   - a transactional batch is atomic: when an operation fails, the operations before it are
//     rolled back, every other operation answers 424 and the batch answers 207 Multi-Status
//     (the stock server keeps what ran before the failure, reports it as done, answers 200;
//     our batch handler replaces its handler, running its document operations);
//   - a batch of more than 100 operations answers 400 (the stock server runs any number);
//   - a single-document write (create, upsert, replace) whose body holds another partition key
//     value than the x-ms-documentdb-partitionkey header answers 400 with substatus 1001
//     (the stock server stores it under the body's value).
//
// It also adds what real Cosmos DB does and the stock server does not, under switches that
// tests flip through a control endpoint (a path the SDK never uses):
//
//   - throttling: a fraction of document writes answer 429 with x-ms-retry-after-ms and
//     x-ms-substatus 3200, deterministically (every write whose running count crosses the next
//     multiple of 1/fraction), and counts what it throttled and served;
//   - request size: bodies over 2 MiB answer 413 RequestEntityTooLarge (on by default).
//
// Control endpoint:
//   GET  /_stevedore/throttle  -> {"fraction", "retry_after_ms", "max_request_bytes",
//                                   "throttled", "served", "too_large"} (served: document
//                                   writes handed to the stock server)
//   POST /_stevedore/throttle  with any of {"fraction": 0.3, "retry_after_ms": 5,
//                                   "max_request_bytes": 2097152} (0 = no size limit); setting
//                                   the fraction restarts the throttling sequence. Answers
//                                   like GET.
//
// Usage: node launcher.js [--port N] [--host 127.0.0.1] [--exit-with-stdin]
// Port 0 or unset: a free port; the port can also come from COSMOS_TEST_SERVER_PORT. Prints
// `listening <port>` on stdout once it accepts connections. With --exit-with-stdin it exits
// when its standard input closes, so it never outlives the test process that started it.

"use strict";

const path = require("path");
const crypto = require("crypto");

const serverDir = path.dirname(require.resolve("@vercel/cosmosdb-server/package.json"));
const lib = name => require(path.join(serverDir, "lib", name));
const rawBody = require(require.resolve("raw-body", { paths: [serverDir] }));

// index.js (the server) is loaded in main(), after the patches below: its route table keeps
// the handlers it finds when it loads.
const batchModule = lib("handler/batch-documents.js");
const documentOperations = lib("handler/_document-operations.js");
const jsonModule = lib("json.js");
const accountModule = lib("account/index.js");
const PartitionKeyRanges = lib("account/partition-key-ranges.js").default;
const Documents = lib("account/documents.js").default;
const Items = lib("account/items.js").default;

// The query engine the stock server runs (@zeit/cosmosdb-query), resolved from where the server
// loads it, so that we patch the very module objects it uses.
const queryDir = path.dirname(
  require.resolve("@zeit/cosmosdb-query/package.json", { paths: [serverDir] })
);
const queryLib = name => require(path.join(queryDir, "lib", name));
const queryHelpers = queryLib("helpers.js");
const transform = queryLib("transformer.js").default;
const generate = require(require.resolve("@babel/generator", { paths: [queryDir] })).default;
const newQuery = queryLib("index.js").default;

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

function parseArgs(argv) {
  const args = {
    port: Number(process.env.COSMOS_TEST_SERVER_PORT || 0),
    host: "127.0.0.1",
    exitWithStdin: false
  };
  for (let i = 0; i < argv.length; i += 1) {
    const key = argv[i];
    if (key === "--port" || key === "-p") {
      args.port = Number(argv[(i += 1)]);
    } else if (key === "--host") {
      args.host = argv[(i += 1)];
    } else if (key === "--exit-with-stdin") {
      args.exitWithStdin = true;
    } else {
      process.stderr.write(`launcher.js: unknown argument ${key}\n`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) {
    process.stderr.write(`launcher.js: bad port ${args.port}\n`);
    process.exit(2);
  }
  return args;
}

// ---------------------------------------------------------------------------------------------
// Fix 1: advertise http:// endpoints. The account is created when the server starts listening,
// through `accountModule.default`, which index.js looks up at that moment.
// ---------------------------------------------------------------------------------------------

// The account, kept for the partition key check in our request listener.
let theAccount;

const StockAccount = accountModule.default;
class HttpAccount extends StockAccount {
  constructor(host, port) {
    super(host, port);
    theAccount = this;
    const data = this.read();
    for (const list of [data.writableLocations, data.readableLocations]) {
      for (const location of list || []) {
        location.databaseAccountEndpoint = `http://${host}:${port}/`;
      }
    }
  }
}
accountModule.default = HttpAccount;

// ---------------------------------------------------------------------------------------------
// Fix 2: partition key range ids as strings ("0", not 0).
// ---------------------------------------------------------------------------------------------

const stockCreateRange = PartitionKeyRanges.prototype.create;
PartitionKeyRanges.prototype.create = function createRange(data) {
  return stockCreateRange.call(this, { ...data, id: String(data.id) });
};

// ---------------------------------------------------------------------------------------------
// Fixes 3 and 4: request bodies. Every handler reads its body through `jsonModule.default(req)`.
// Our request listener has already read the body (to check its size); parse that, give batch
// operations the partition key from the header when they carry none, and scope a query with a
// partition key header to that partition.
// ---------------------------------------------------------------------------------------------

const PARTITION_KEY_HEADER = "x-ms-documentdb-partitionkey";
const PARTITION_SCOPE = Symbol("partition key of a query");

jsonModule.default = async req => {
  const buffer = req.stevedoreBody !== undefined ? req.stevedoreBody : await rawBody(req);
  const body = JSON.parse(buffer.toString());
  const headerKey = req.headers[PARTITION_KEY_HEADER];
  if (headerKey && isTrue(req.headers["x-ms-cosmos-is-batch-request"]) && Array.isArray(body)) {
    for (const operation of body) {
      if (operation && operation.partitionKey === undefined) {
        operation.partitionKey = headerKey;
      }
    }
  }
  if (headerKey && isQuery(req) && body && typeof body === "object") {
    body[PARTITION_SCOPE] = JSON.parse(headerKey);
  }
  return body;
};

// A document is in the partition of a key header (`["a"]`, `[42]`, `[null]`, or `[{}]` for
// documents without the property) when its first partition key path holds that value (the
// stock server knows only the first path).
function inPartition(documents, document, key) {
  const wanted = Array.isArray(key) ? key[0] : key;
  const value = documents._getPartition(document);
  if (wanted !== null && typeof wanted === "object") {
    return value === undefined;
  }
  return value === wanted;
}

const stockQuery = Documents.prototype.query;
function scopedQuery(params, options) {
  const key = params ? params[PARTITION_SCOPE] : undefined;
  if (key === undefined) {
    return stockQuery.call(this, params, options);
  }
  const scoped = new Map([...this._data].filter(([, item]) => inPartition(this, item.read(), key)));
  return stockQuery.call(Object.create(this, { _data: { value: scoped } }), params, options);
}

// ---------------------------------------------------------------------------------------------
// Fix 7: queries take linear time. The stock query engine compiles every FROM clause and JOIN
// into `rows.reduce(($, c) => [...$, { c }], [])`, which copies every row gathered so far for
// each document: quadratic in the container's size (`SELECT * FROM c` over 20,000 documents
// took 6.5 s, over 50,000 52 s). We compile the same queries with those accumulators
// appended to in place (`($.push({ c }), $)`); each starts as a fresh `[]`, so nothing else
// sees the difference.
// ---------------------------------------------------------------------------------------------

const QueryPrototype = Object.getPrototypeOf(newQuery("SELECT * FROM c"));
Object.defineProperty(QueryPrototype, "code", {
  configurable: true,
  get() {
    if (!this._code) {
      const jsAst = transform(this.ast);
      appendInPlace(jsAst);
      this._code = generate(jsAst).code;
    }
    return this._code;
  }
});

const identifier = name => ({ type: "Identifier", name });
const member = (object, name) => ({
  type: "MemberExpression",
  object,
  property: identifier(name),
  computed: false
});
const call = (callee, args) => ({ type: "CallExpression", callee, arguments: args });

// Rewrites, anywhere in `node`, each `.reduce((acc, ...) => BODY, [])` whose BODY returns
// `[...acc, a, ...b]` (also in either branch of a `?:`) to return `(acc.push(a),
// b.forEach(x => acc.push(x)), acc)`.
function appendInPlace(node) {
  if (Array.isArray(node)) {
    node.forEach(appendInPlace);
    return;
  }
  if (!node || typeof node !== "object") {
    return;
  }
  if (isReduceIntoNewArray(node)) {
    const reducer = node.arguments[0];
    reducer.body = appendedInPlace(reducer.body, reducer.params[0].name);
  }
  for (const value of Object.values(node)) {
    appendInPlace(value);
  }
}

function isReduceIntoNewArray(node) {
  const [reducer, initial] = node.arguments || [];
  return (
    node.type === "CallExpression" &&
    node.callee.type === "MemberExpression" &&
    !node.callee.computed &&
    node.callee.property.name === "reduce" &&
    node.arguments.length === 2 &&
    reducer.type === "ArrowFunctionExpression" &&
    reducer.params.length > 0 &&
    reducer.params[0].type === "Identifier" &&
    initial.type === "ArrayExpression" &&
    initial.elements.length === 0
  );
}

function appendedInPlace(body, accumulator) {
  if (body.type === "ConditionalExpression") {
    return {
      ...body,
      consequent: appendedInPlace(body.consequent, accumulator),
      alternate: appendedInPlace(body.alternate, accumulator)
    };
  }
  const [first, ...rest] = body.type === "ArrayExpression" ? body.elements : [];
  const extendsAccumulator =
    first &&
    first.type === "SpreadElement" &&
    first.argument.type === "Identifier" &&
    first.argument.name === accumulator &&
    rest.every(element => element !== null);
  if (!extendsAccumulator) {
    return body;
  }
  const push = args => call(member(identifier(accumulator), "push"), args);
  const item = `${accumulator}_item`;
  const steps = rest.map(element =>
    element.type === "SpreadElement"
      ? call(member(element.argument, "forEach"), [
          {
            type: "ArrowFunctionExpression",
            params: [identifier(item)],
            body: push([identifier(item)]),
            async: false,
            expression: true
          }
        ])
      : push([element])
  );
  return { type: "SequenceExpression", expressions: [...steps, identifier(accumulator)] };
}

// The same again where the engine strips `undefined` from every page it answers: the stock
// helper rebuilds the page array once per item.
queryHelpers.stripUndefined = function stripUndefined(value) {
  if (Array.isArray(value)) {
    const kept = [];
    for (const item of value) {
      if (typeof item !== "undefined") {
        kept.push(stripUndefined(item));
      }
    }
    return kept;
  }
  if (value && typeof value === "object") {
    const kept = {};
    for (const [key, item] of Object.entries(value)) {
      if (typeof item !== "undefined") {
        kept[key] = stripUndefined(item);
      }
    }
    return kept;
  }
  return value;
};

// ---------------------------------------------------------------------------------------------
// Fix 8: a continuation does not run the query again. The stock server answers every page by
// running the whole query (gather, filter and sort the container), then scanning for the
// continuation's position, so reading a container page by page took pages x container. We
// keep the sorted rows of each query that answered with a continuation, with the position
// each continuation token it handed out resumes at, and answer the pages that follow from
// those rows with the stock paginator (the same tokens, the same pages), until the container
// changes. A query without a continuation always runs afresh.
// ---------------------------------------------------------------------------------------------

const QUERY_ROWS = Symbol("sorted rows of continued queries");
const QUERIES_KEPT = 16; // per container; the least recently used is forgotten first
const stockPaginate = queryHelpers.paginate;
// While a query runs: every call it makes to the paginator, with the rows it paginates.
let paginations = null;

queryHelpers.paginate = function rememberRows(rows, maxItemCount, continuation, getRid, ...orders) {
  if (paginations) {
    paginations.push({ rows, getRid, orders, resumeAt: new Map() });
  }
  return stockPaginate.call(this, rows, maxItemCount, continuation, getRid, ...orders);
};

// Every change to a container's documents forgets its kept rows.
for (const name of ["_set", "delete"]) {
  const stock = Items.prototype[name];
  Items.prototype[name] = function forgetQueryRows(...args) {
    this[QUERY_ROWS] = undefined;
    return stock.apply(this, args);
  };
}

// Records where the page after `result` starts, when the page it answers started at `start`.
function rememberResume(kept, result, start, maxItemCount) {
  if (result.continuation && start !== undefined) {
    kept.resumeAt.set(result.continuation.token, start + maxItemCount);
  }
}

// The next page of a kept query. The stock paginator finds where a continuation resumes by
// comparing every row before it with the token; for a token we handed out we know the answer,
// and give it that position instead of the scan.
function keptPage(kept, maxItemCount, continuation) {
  const start = kept.resumeAt.get(continuation.token);
  if (start !== undefined) {
    Object.defineProperty(kept.rows, "findIndex", { value: () => start, configurable: true });
  }
  try {
    const page = stockPaginate.call(
      queryHelpers,
      kept.rows,
      maxItemCount,
      continuation,
      kept.getRid,
      ...kept.orders
    );
    rememberResume(kept, page, start, maxItemCount);
    return page;
  } catch (err) {
    err.badRequest = true; // a malformed continuation token, as the stock query reports it
    throw err;
  } finally {
    delete kept.rows.findIndex;
  }
}

Documents.prototype.query = function pagedQuery(params, options) {
  const { maxItemCount, continuation } = options || {};
  const key = JSON.stringify([params.query, params.parameters || [], params[PARTITION_SCOPE]]);
  const queries = this[QUERY_ROWS] || (this[QUERY_ROWS] = new Map());
  const kept = queries.get(key);
  if (continuation && kept && this._parent.read()) {
    queries.delete(key);
    queries.set(key, kept);
    return keptPage(kept, maxItemCount, continuation);
  }
  paginations = [];
  let result;
  let seen;
  try {
    result = scopedQuery.call(this, params, options);
  } finally {
    seen = paginations;
    paginations = null;
  }
  // Only a plain paginated query (one call to the paginator) is kept.
  if (result && result.continuation && seen.length === 1) {
    rememberResume(seen[0], result, continuation ? undefined : 0, maxItemCount);
    queries.delete(key);
    queries.set(key, seen[0]);
    if (queries.size > QUERIES_KEPT) {
      queries.delete(queries.keys().next().value);
    }
  }
  return result;
};

function isTrue(value) {
  const values = Array.isArray(value) ? value : [value];
  return values.some(v => typeof v === "string" && v.toLowerCase() === "true");
}

// ---------------------------------------------------------------------------------------------
// Strictness: atomic transactional batches of at most 100 operations. Our batch handler runs
// the stock server's own document operations, in order, synchronously (so no other request
// interleaves), logging what it changes in the container's two maps; when an atomic batch
// fails it puts those entries back. Documents are replaced, never changed in place, so the
// old map entries are the old documents.
// ---------------------------------------------------------------------------------------------

const MAX_BATCH_OPERATIONS = 100;
const BATCH_OPERATIONS = {
  Create: documentOperations.createOperation,
  Upsert: documentOperations.upsertOperation,
  Read: documentOperations.readOperation,
  Delete: documentOperations.deleteOperation,
  Replace: documentOperations.replaceOperation
};

// Records the first prior value of every key `set` or `delete`d in `maps` until `stop`.
function undoLog(maps) {
  const logs = maps.map(map => {
    const log = new Map();
    const remember = key => {
      if (!log.has(key)) {
        log.set(key, map.has(key) ? { value: map.get(key) } : null);
      }
    };
    map.set = (key, value) => {
      remember(key);
      return Map.prototype.set.call(map, key, value);
    };
    map.delete = key => {
      remember(key);
      return Map.prototype.delete.call(map, key);
    };
    return [map, log];
  });
  return {
    stop() {
      for (const [map] of logs) {
        delete map.set;
        delete map.delete;
      }
    },
    rollback() {
      for (const [map, log] of logs) {
        for (const [key, before] of log) {
          if (before) {
            map.set(key, before.value);
          } else {
            map.delete(key);
          }
        }
      }
    }
  };
}

batchModule.default = async (account, req, res, { dbId, collId }) => {
  const body = await jsonModule.default(req);
  // From here on nothing awaits: the batch runs as one step of the event loop.
  const collection = account.database(dbId).collection(collId);
  if (!collection.read()) {
    res.statusCode = 404;
    return {};
  }
  if (!Array.isArray(body)) {
    res.statusCode = 400;
    return { code: "BadRequest", message: "Invalid request body" };
  }
  if (body.length > MAX_BATCH_OPERATIONS) {
    res.statusCode = 400;
    return {
      code: "BadRequest",
      message: `Batch request has ${body.length} operations; at most ${MAX_BATCH_OPERATIONS} are supported.`
    };
  }
  const unknown = body.find(operation => !BATCH_OPERATIONS[operation && operation.operationType]);
  if (unknown !== undefined) {
    res.statusCode = 400;
    return {
      code: "BadRequest",
      message: `Operation type '${unknown && unknown.operationType}' is not supported in Batch.`
    };
  }
  const atomic = isTrue(req.headers["x-ms-cosmos-batch-atomic"]);
  const continueOnError = isTrue(req.headers["x-ms-cosmos-batch-continue-on-error"]);
  const documents = collection.documents;
  const undo = undoLog([documents._data, documents._index]);
  const results = [];
  let failed = -1;
  try {
    for (const operation of body) {
      if (failed !== -1 && !continueOnError) {
        results.push({ statusCode: 424, requestCharge: 0 });
        continue;
      }
      const result = BATCH_OPERATIONS[operation.operationType](collection, operation);
      if (result.statusCode >= 400) {
        failed = failed === -1 ? results.length : failed;
        results.push({ statusCode: result.statusCode, requestCharge: 0 });
      } else {
        results.push({
          statusCode: result.statusCode,
          requestCharge: 1,
          eTag: result.body ? result.body._etag : undefined,
          resourceBody: result.body
        });
      }
    }
  } catch (err) {
    undo.stop();
    undo.rollback();
    throw err;
  }
  undo.stop();
  if (failed === -1 || !atomic) {
    return results;
  }
  undo.rollback();
  documents[QUERY_ROWS] = undefined; // the rollback changed the documents behind the stock code
  res.statusCode = 207;
  return results.map((result, i) => (i === failed ? result : { statusCode: 424, requestCharge: 0 }));
};

// ---------------------------------------------------------------------------------------------
// Switches: throttling and request size
// ---------------------------------------------------------------------------------------------

const MIB = 1024 * 1024;
const state = {
  fraction: 0,
  retryAfterMs: 5,
  maxRequestBytes: 2 * MIB,
  // Document writes seen since the fraction was last set; decides which ones to throttle.
  sequence: 0,
  throttled: 0,
  served: 0,
  tooLarge: 0
};

function switches() {
  return {
    fraction: state.fraction,
    retry_after_ms: state.retryAfterMs,
    max_request_bytes: state.maxRequestBytes,
    throttled: state.throttled,
    served: state.served,
    too_large: state.tooLarge
  };
}

function applySwitches(update) {
  if (update.fraction !== undefined) {
    const fraction = Number(update.fraction);
    if (!(fraction >= 0 && fraction <= 1)) {
      throw new Error(`fraction must be within 0..1, got ${update.fraction}`);
    }
    state.fraction = fraction;
    state.sequence = 0;
  }
  if (update.retry_after_ms !== undefined) {
    const ms = Number(update.retry_after_ms);
    if (!(Number.isInteger(ms) && ms >= 0)) {
      throw new Error(`retry_after_ms must be a whole number >= 0, got ${update.retry_after_ms}`);
    }
    state.retryAfterMs = ms;
  }
  if (update.max_request_bytes !== undefined) {
    const bytes = Number(update.max_request_bytes);
    if (!(Number.isInteger(bytes) && bytes >= 0)) {
      throw new Error(`max_request_bytes must be a whole number >= 0, got ${update.max_request_bytes}`);
    }
    state.maxRequestBytes = bytes;
  }
}

// Whether the next document write is throttled: write n (1-based) is throttled when
// floor(n * fraction) steps up, so exactly `fraction` of writes are, spread evenly.
function nextWriteThrottled() {
  state.sequence += 1;
  const n = state.sequence;
  return Math.floor(n * state.fraction) > Math.floor((n - 1) * state.fraction);
}

// Document writes: create, upsert, batch (POST .../docs that is not a query), replace, patch,
// delete of one document. Reads, queries and metadata are never throttled.
const DOCS = /^\/+dbs\/[^/]+\/colls\/[^/]+\/docs\/?$/;
const DOC = /^\/+dbs\/[^/]+\/colls\/[^/]+\/docs\/[^/]+\/?$/;

function isQuery(req) {
  return isTrue(req.headers["x-ms-documentdb-isquery"]) ||
    req.headers["content-type"] === "application/query+json";
}

function isDocumentWrite(req, pathname) {
  if (req.method === "POST") {
    return DOCS.test(pathname) && !isQuery(req);
  }
  return ["PUT", "PATCH", "DELETE"].includes(req.method) && DOC.test(pathname);
}

// Whether a single-document write (create, upsert, replace) carries a partition key header
// that its body does not match. Batches are left alone.
function partitionKeyMismatch(req, pathname) {
  const header = req.headers[PARTITION_KEY_HEADER];
  const single =
    (req.method === "POST" && DOCS.test(pathname) && !isQuery(req) &&
      !isTrue(req.headers["x-ms-cosmos-is-batch-request"])) ||
    (req.method === "PUT" && DOC.test(pathname));
  const names = /^\/+dbs\/([^/]+)\/colls\/([^/]+)\//.exec(pathname);
  if (!header || !single || !names || !theAccount) {
    return false;
  }
  const collection = theAccount
    .database(decodeURIComponent(names[1]))
    .collection(decodeURIComponent(names[2]));
  let document;
  let key;
  try {
    document = JSON.parse(req.stevedoreBody.toString());
    key = JSON.parse(header);
  } catch (err) {
    return false; // the stock handler reports malformed bodies
  }
  if (!collection.read() || !document || typeof document !== "object") {
    return false;
  }
  return !inPartition(collection.documents, document, key);
}

function sendJson(res, status, headers, body) {
  res.statusCode = status;
  res.setHeader("content-type", "application/json");
  res.setHeader("x-ms-activity-id", crypto.randomUUID());
  for (const [name, value] of Object.entries(headers)) {
    res.setHeader(name, value);
  }
  res.end(JSON.stringify(body));
}

function throttle(res) {
  sendJson(
    res,
    429,
    {
      "x-ms-retry-after-ms": String(state.retryAfterMs),
      "x-ms-substatus": "3200",
      "x-ms-request-charge": "0"
    },
    {
      code: "TooManyRequests",
      message:
        "Message: {\"Errors\":[\"Request rate is large. More Request Units may be needed, so no " +
        "changes were made. Please retry this request later.\"]}"
    }
  );
}

function wrongPartitionKey(res) {
  sendJson(
    res,
    400,
    { "x-ms-substatus": "1001", "x-ms-request-charge": "0" },
    {
      code: "BadRequest",
      message:
        "Message: {\"Errors\":[\"PartitionKey extracted from document doesn't match the one " +
        "specified in the header.\"]}"
    }
  );
}

function tooLarge(res) {
  sendJson(
    res,
    413,
    { "x-ms-request-charge": "0" },
    { code: "RequestEntityTooLarge", message: "Message: {\"Errors\":[\"Request size is too large\"]}" }
  );
}

// ---------------------------------------------------------------------------------------------
// The request listener in front of the stock one
// ---------------------------------------------------------------------------------------------

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    chunks.push(chunk);
    size += chunk.length;
  }
  return Buffer.concat(chunks, size);
}

async function control(req, res) {
  try {
    if (req.method === "POST") {
      const text = (await readBody(req)).toString();
      applySwitches(text.trim() ? JSON.parse(text) : {});
    } else if (req.method !== "GET") {
      sendJson(res, 405, {}, { message: "GET or POST" });
      return;
    }
    sendJson(res, 200, {}, switches());
  } catch (err) {
    sendJson(res, 400, {}, { message: err.message });
  }
}

function frontOf(stockListener) {
  return async (req, res) => {
    const pathname = new URL(req.url, "http://localhost").pathname;
    if (pathname === "/_stevedore/throttle") {
      await control(req, res);
      return;
    }

    // Fix 4: a query without a partition key is one the SDK fans out per range; one with a
    // partition key is scoped to it when its body is read (above), so its SQL need not filter
    // on the key. Either way the stock check for partition keys in the SQL does not apply.
    if (req.method === "POST" && isQuery(req)) {
      req.headers["x-ms-documentdb-query-enablecrosspartition"] = "true";
    }

    if (["POST", "PUT", "PATCH"].includes(req.method)) {
      const declared = Number(req.headers["content-length"] || 0);
      req.stevedoreBody = await readBody(req);
      const size = Math.max(declared, req.stevedoreBody.length);
      if (state.maxRequestBytes > 0 && size > state.maxRequestBytes) {
        state.tooLarge += 1;
        tooLarge(res);
        return;
      }
    }

    // Fix 6: point reads skip the stock partition key check; the document store is keyed by
    // partition key and id anyway, and answers 404 for what it does not hold.
    if (req.method === "GET" && DOC.test(pathname)) {
      req.headers["x-ms-documentdb-query-enablecrosspartition"] = "true";
    }

    if (isDocumentWrite(req, pathname)) {
      if (state.fraction > 0 && nextWriteThrottled()) {
        state.throttled += 1;
        throttle(res);
        return;
      }
      if (partitionKeyMismatch(req, pathname)) {
        wrongPartitionKey(res);
        return;
      }
      state.served += 1;
    }
    stockListener(req, res);
  };
}

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------

function main() {
  const args = parseArgs(process.argv.slice(2));
  const { createHttpServer } = lib("index.js");
  // Fix 5: keep connections open (the stock default answers `connection: close`), and for
  // longer than the SDK's idle pool timeout, so it never reuses a connection being closed.
  const server = createHttpServer({ keepAlive: true });
  server.keepAliveTimeout = 10 * 60 * 1000;
  server.headersTimeout = server.keepAliveTimeout + 1000;

  const stockListeners = server.listeners("request");
  if (stockListeners.length !== 1) {
    throw new Error(`expected one request listener on the stock server, found ${stockListeners.length}`);
  }
  server.removeAllListeners("request");
  const front = frontOf(stockListeners[0]);
  server.on("request", (req, res) => {
    front(req, res).catch(err => {
      process.stderr.write(`launcher.js: ${err.stack || err}\n`);
      if (!res.headersSent) {
        sendJson(res, 500, {}, { message: String(err.message || err) });
      } else {
        res.destroy();
      }
    });
  });

  server.on("error", err => {
    process.stderr.write(`launcher.js: ${err.stack || err}\n`);
    process.exit(1);
  });
  server.listen(args.port, args.host, () => {
    process.stdout.write(`listening ${server.address().port}\n`);
  });

  if (args.exitWithStdin) {
    // The test that started us is gone when our standard input closes: go too.
    process.stdin.on("end", () => process.exit(0));
    process.stdin.on("error", () => process.exit(0));
    process.stdin.resume();
  }
}

main();
