// Drives s3db.js (the JavaScript project s3db for Python follows) through the same operations
// as bench/core_vs_js.py drives ours, on its memory client, and prints one JSON object.
//
//   node s3db_js_bench.mjs '<config JSON>'
//
// config: {databaseModule: absolute path of dist/database.class.js, insertsPerRep, reps,
//          warmupInserts, rooms, seconds}. Each rep of insert inserts a fixed number of records
// (so both sides end with the same data); each rep of get / list(100) / query runs for
// `seconds` and counts completed operations. Every operation is awaited before the next one.
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';

const cfg = JSON.parse(process.argv[2]);
const { Database } = await import(pathToFileURL(cfg.databaseModule).href);

const ATTRIBUTES = {
  roomId: 'string|required',
  title: 'string|required',
  author: 'string|required',
  score: 'number',
};

function record(i) {
  return {
    roomId: `room-${String(i % cfg.rooms).padStart(3, '0')}`,
    title: `message number ${i} in the benchmark`,
    author: `author-${i % 7}`,
    score: i,
  };
}

async function timed(seconds, op) {
  let n = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  let now = start;
  while (now < end) {
    await op(n);
    n += 1;
    now = performance.now();
  }
  return n / ((now - start) / 1000);
}

const db = new Database({
  connectionString: 'memory://bench/p',
  logLevel: 'silent',
  exitOnSignal: false,
});
await db.connect();
const items = await db.createResource({
  name: 'items',
  attributes: ATTRIBUTES,
  partitions: { byRoom: { fields: { roomId: 'string' } } },
  // s3db.js writes partition references in the background by default on stores without a
  // partition index; ours writes them before insert returns, so make it wait the same way.
  asyncPartitions: false,
});

const ids = [];
let next = 0;
async function insertOne() {
  const rec = await items.insert(record(next));
  next += 1;
  ids.push(rec.id);
}

const out = { insert: [], get: [], list100: [], query: [], checks: {} };
for (let i = 0; i < cfg.warmupInserts; i++) await insertOne();
for (let r = 0; r < cfg.reps; r++) {
  const start = performance.now();
  for (let i = 0; i < cfg.insertsPerRep; i++) await insertOne();
  out.insert.push(cfg.insertsPerRep / ((performance.now() - start) / 1000));
}

const stride = 7919; // a prime: walks the ids in a scattered order
const getOp = (n) => items.get(ids[(n * stride) % ids.length]);
const listOp = () => items.list({ limit: 100 });
const room = (n) => `room-${String(n % cfg.rooms).padStart(3, '0')}`;
const queryOp = (n) => items.query({ roomId: room(n) }, { limit: 100000 });

const warm = Math.max(cfg.seconds / 3, 0.05);
await timed(warm, getOp);
await timed(warm, listOp);
await timed(warm, queryOp);
for (let r = 0; r < cfg.reps; r++) {
  out.get.push(await timed(cfg.seconds, getOp));
  out.list100.push(await timed(cfg.seconds, listOp));
  out.query.push(await timed(cfg.seconds, queryOp));
}

const listed = await listOp();
const queried = await queryOp(3);
const fetched = await items.get(ids[0]);
out.checks = {
  records: ids.length,
  listLength: listed.length,
  listFull: listed.every((r) => Object.keys(ATTRIBUTES).every((k) => k in r)),
  queryLength: queried.length,
  queryRoomOk: queried.every((r) => r.roomId === room(3)),
  getOk: fetched.id === ids[0] && fetched.title === record(0).title && fetched.score === 0,
  node: process.version,
};
await db.disconnect();
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(0);
