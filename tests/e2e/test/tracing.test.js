"use strict";
// OpenTelemetry: a publish entry's W3C traceparent is continued through the fanout's span and the
// gateway's delivery span, so one trace shows backend → fanout → gateway. The collector is a
// small OTLP/HTTP (JSON) receiver in this test.

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const http = require("node:http");
const crypto = require("node:crypto");
const { useCluster, record, eventually } = require("../lib/cluster");

/** Spans received, each {service, traceId, spanId, parentSpanId, name}. */
const spans = [];
const collector = http.createServer((req, res) => {
  let body = "";
  req.setEncoding("utf8");
  req.on("data", (d) => (body += d));
  req.on("end", () => {
    try {
      const data = JSON.parse(body);
      for (const rs of data.resourceSpans || []) {
        const attr = (rs.resource?.attributes || []).find((a) => a.key === "service.name");
        const service = attr?.value?.stringValue;
        for (const ss of rs.scopeSpans || []) for (const s of ss.spans || []) spans.push({ service, ...s });
      }
    } catch (_) {
      // not JSON: ignored; the assertions below report what arrived
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end("{}");
  });
});
const collectorReady = new Promise((resolve) => collector.listen(0, "127.0.0.1", resolve));
const port = () => collector.address().port;

// The port is known only once listening, and the cluster reads its env when it starts (in its
// own before hook): this hook is registered first, so it runs first.
const env = {};
before(async () => {
  await collectorReady;
  Object.assign(env, {
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port()}`,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_BSP_SCHEDULE_DELAY: "100",
  });
});
const cluster = useCluster({ gateways: ["gw-a", "gw-b"], env });
after(() => collector.close());

test("one trace spans publish → fanout → gateway delivery", async () => {
  const s = await cluster.connect("gw-b");
  await cluster.join(s, "traced");
  const rec = record(s);
  const traceId = crypto.randomBytes(16).toString("hex");
  const publisherSpan = crypto.randomBytes(8).toString("hex");
  await cluster.publish({ room: "traced", event: "m", data: {}, traceparent: `00-${traceId}-${publisherSpan}-01` });
  await rec.until("m");

  const inTrace = () => spans.filter((x) => x.traceId === traceId);
  await eventually(
    () => {
      const t = inTrace();
      return t.some((x) => x.service === "roomcast-fanout") && t.some((x) => x.service === "roomcast-gateway");
    },
    { message: `spans of trace ${traceId} from the fanout and the gateway (received: ${JSON.stringify(spans.map((x) => [x.service, x.name, x.traceId]))})` }
  );
  const t = inTrace();
  // Every replica reads every entry, so each has an `entry` span in the trace (the ones that do
  // not own the room just skip it); the gateway continues from the owner's.
  const fanoutSpans = t.filter((x) => x.service === "roomcast-fanout");
  for (const f of fanoutSpans) assert.equal(f.parentSpanId, publisherSpan, "fanout spans continue the publisher's span");
  const gateway = t.find((x) => x.service === "roomcast-gateway" && x.name === "deliver");
  assert.ok(gateway, `a deliver span on the gateway: ${JSON.stringify(t)}`);
  assert.ok(
    fanoutSpans.some((f) => f.spanId === gateway.parentSpanId),
    `the gateway's delivery span continues a fanout span: ${JSON.stringify(t)}`
  );

  // Untraced messages are not recorded.
  const count = spans.length;
  const rec2 = record(s);
  await cluster.publish({ room: "traced", event: "plain", data: {} });
  await rec2.until("plain");
  assert.ok(spans.slice(count).every((x) => x.traceId === traceId), "no spans for messages without a traceparent");
});
