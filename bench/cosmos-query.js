#!/usr/bin/env node
// How long the Cosmos DB test server (testkit/cosmos/launcher.js) takes to answer
// `SELECT * FROM c`, by container size, page size and scope, over plain HTTP the way the SDK
// asks (one request per page, following x-ms-continuation).
//
// Usage: node bench/cosmos-query.js [--docs 5000,20000,50000] [--pages none,100,1000]
//                                   [--budget-s 60] [--launcher PATH]
// (run `npm ci` in testkit/cosmos first; the tests do it on their first Cosmos test).
//
// Each container holds DOCS documents of ~200 bytes in 10 partitions (`/pk` = p0..p9). For each
// scope (cross-partition: no partition key header, as the SDK fans out; one partition: the
// header ["p0"]) and page size (none: no x-ms-max-item-count header; a number: that header), it
// prints the time to the first page, the time to read every page, the page count, and the
// documents read (checked against what the container holds). A read that takes longer than
// --budget-s is cut off and reported with the pages it got through.

"use strict";

const http = require("http");
const path = require("path");
const { spawn } = require("child_process");

function parseArgs(argv) {
  const args = {
    docs: [5000, 20000, 50000],
    pages: [null, 100, 1000],
    budgetS: 60,
    launcher: path.join(__dirname, "..", "testkit", "cosmos", "launcher.js")
  };
  for (let i = 0; i < argv.length; i += 1) {
    const value = argv[i + 1];
    switch (argv[i]) {
      case "--docs":
        args.docs = value.split(",").map(Number);
        break;
      case "--pages":
        args.pages = value.split(",").map(p => (p === "none" ? null : Number(p)));
        break;
      case "--budget-s":
        args.budgetS = Number(value);
        break;
      case "--launcher":
        args.launcher = path.resolve(value);
        break;
      default:
        throw new Error(`unknown argument ${argv[i]}`);
    }
    i += 1;
  }
  return args;
}

function startServer(launcher) {
  const child = spawn(process.execPath, [launcher, "--port", "0", "--exit-with-stdin"], {
    stdio: ["pipe", "pipe", "inherit"]
  });
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", chunk => {
      out += chunk;
      const match = /listening (\d+)/.exec(out);
      if (match) {
        resolve({ child, port: Number(match[1]) });
      }
    });
    child.on("exit", code => reject(new Error(`launcher exited with ${code}`)));
  });
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(port, method, pathname, headers, body) {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port,
        method,
        path: pathname,
        agent,
        headers: {
          "content-type": "application/json",
          ...(payload ? { "content-length": payload.length } : {}),
          ...headers
        }
      },
      res => {
        const chunks = [];
        res.on("data", chunk => chunks.push(chunk));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          if (res.statusCode >= 400) {
            reject(new Error(`${method} ${pathname}: ${res.statusCode} ${text.slice(0, 300)}`));
            return;
          }
          resolve({ headers: res.headers, body: text ? JSON.parse(text) : null });
        });
      }
    );
    req.on("error", reject);
    req.end(payload);
  });
}

const PARTITIONS = 10;

async function fill(port, db, docs) {
  await request(port, "POST", "/dbs", {}, { id: db });
  await request(port, "POST", `/dbs/${db}/colls`, {}, {
    id: "c",
    partitionKey: { paths: ["/pk"], kind: "Hash" }
  });
  for (let p = 0; p < PARTITIONS; p += 1) {
    const ids = [];
    for (let i = p; i < docs; i += PARTITIONS) {
      ids.push(i);
    }
    for (let start = 0; start < ids.length; start += 100) {
      const operations = ids.slice(start, start + 100).map(i => ({
        operationType: "Upsert",
        resourceBody: { id: String(i), pk: `p${p}`, amount: i * 3, note: "x".repeat(150) }
      }));
      await request(
        port,
        "POST",
        `/dbs/${db}/colls/c/docs`,
        {
          "x-ms-cosmos-is-batch-request": "True",
          "x-ms-cosmos-batch-atomic": "True",
          "x-ms-documentdb-partitionkey": JSON.stringify([`p${p}`])
        },
        operations
      );
    }
  }
}

async function readAll(port, db, pageSize, partition, budgetMs) {
  const started = process.hrtime.bigint();
  const elapsedMs = () => Number(process.hrtime.bigint() - started) / 1e6;
  let continuation;
  let pages = 0;
  let documents = 0;
  let firstPageMs;
  do {
    const headers = {
      "content-type": "application/query+json",
      "x-ms-documentdb-isquery": "True"
    };
    if (pageSize !== null) {
      headers["x-ms-max-item-count"] = String(pageSize);
    }
    if (partition !== null) {
      headers["x-ms-documentdb-partitionkey"] = JSON.stringify([partition]);
    }
    if (continuation) {
      headers["x-ms-continuation"] = continuation;
    }
    const reply = await request(port, "POST", `/dbs/${db}/colls/c/docs`, headers, {
      query: "SELECT * FROM c",
      parameters: []
    });
    pages += 1;
    documents += reply.body.Documents.length;
    firstPageMs = firstPageMs === undefined ? elapsedMs() : firstPageMs;
    continuation = reply.headers["x-ms-continuation"];
  } while (continuation && elapsedMs() < budgetMs);
  return { firstPageMs, totalMs: elapsedMs(), pages, documents, complete: !continuation };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { child, port } = await startServer(args.launcher);
  console.log(`launcher: ${args.launcher}`);
  console.log("docs    scope      page   first page   all pages   pages   documents");
  try {
    for (const docs of args.docs) {
      const db = `q${docs}`;
      await fill(port, db, docs);
      for (const partition of [null, "p0"]) {
        for (const pageSize of args.pages) {
          const want = partition === null ? docs : Math.ceil(docs / PARTITIONS);
          const r = await readAll(port, db, pageSize, partition, args.budgetS * 1000);
          const status = r.complete
            ? r.documents === want ? "" : `  WRONG: expected ${want}`
            : `  cut off after ${args.budgetS} s (${want} expected)`;
          console.log(
            `${String(docs).padEnd(7)} ${(partition === null ? "cross" : "partition").padEnd(10)} ` +
              `${String(pageSize === null ? "none" : pageSize).padStart(4)} ` +
              `${(r.firstPageMs / 1000).toFixed(3).padStart(10)} s ` +
              `${(r.totalMs / 1000).toFixed(3).padStart(9)} s ` +
              `${String(r.pages).padStart(7)} ${String(r.documents).padStart(11)}${status}`
          );
        }
      }
    }
  } finally {
    child.stdin.end();
    agent.destroy();
  }
}

main().catch(err => {
  console.error(err.stack || err);
  process.exit(1);
});
