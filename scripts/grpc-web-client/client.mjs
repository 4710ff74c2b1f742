#!/usr/bin/env node
// gRPC-Web test client for scripts/e2e.sh.
//
// The schema is not generated into this folder: it is read at run time from a
// FileDescriptorSet that `buf build ../../proto -o FILE` writes, so the client
// always speaks the proto in the work tree. Calls go through
// @connectrpc/connect-node's gRPC-Web transport (HTTP/1.1 by default, h2 with
// --http2) and results are printed as proto3 JSON, one document per line.
//
// usage: node client.mjs --url http://127.0.0.1:PORT --descriptors FILE [--http2]
//                        [--token TOKEN] [--header 'NAME: VALUE']... COMMAND ARGS
//   --token TOKEN                send `authorization: Bearer TOKEN` (an access
//                                token or an API key secret) with every call
//   --header 'NAME: VALUE'       send this request header with every call
//                                (repeatable), e.g. 'x-api-key: sbk_...'
//
//   me                           AuthService/GetCurrentUser; prints the User
//   get ID                       GetConversation; prints the Conversation
//   create TITLE                 CreateConversation; prints the Conversation
//   send CID TEXT                SendMessage; prints the SendMessageResponse
//   stream CID MID [MIN_DELTAS]  StreamReply; prints each ReplyEvent and fails
//                                unless at least MIN_DELTAS (default 3) deltas
//                                come, seq runs 1..n without gaps, and the last
//                                event is `done` with the deltas' text
//   list                         ListConversations; prints the response
//   error-get ID                 GetConversation expected to fail; prints
//                                {code,codeName,message}
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { createFileRegistry, fromBinary, toJson } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

function die(msg) {
  process.stderr.write(`grpc-web-client: FAIL: ${msg}\n`);
  process.exit(1);
}

const { values: opts, positionals } = parseArgs({
  options: {
    url: { type: "string" },
    descriptors: { type: "string" },
    http2: { type: "boolean", default: false },
    timeout: { type: "string", default: "20000" },
    token: { type: "string" },
    header: { type: "string", multiple: true, default: [] },
  },
  allowPositionals: true,
});
if (!opts.url || !opts.descriptors || positionals.length === 0) {
  die("usage: client.mjs --url URL --descriptors FILE [--http2] [--token T] [--header 'N: V']... COMMAND ARGS");
}

// Credentials travel as request headers on every call, as a browser's
// gRPC-Web client would send them.
const headers = new Headers();
if (opts.token !== undefined) headers.set("authorization", `Bearer ${opts.token}`);
for (const h of opts.header) {
  const colon = h.indexOf(":");
  if (colon <= 0) die(`--header ${JSON.stringify(h)}: expected 'NAME: VALUE'`);
  headers.append(h.slice(0, colon).trim(), h.slice(colon + 1).trim());
}

const registry = createFileRegistry(
  fromBinary(FileDescriptorSetSchema, readFileSync(opts.descriptors)),
);
const service = registry.getService("switchboard.v1.ChatService");
if (!service) die("switchboard.v1.ChatService is not in the descriptor set");
const authService = registry.getService("switchboard.v1.AuthService");
if (!authService) die("switchboard.v1.AuthService is not in the descriptor set");

const transport = createGrpcWebTransport({
  baseUrl: opts.url,
  httpVersion: opts.http2 ? "2" : "1.1",
  useBinaryFormat: true,
});
const client = createClient(service, transport);
const authClient = createClient(authService, transport);
const callOpts = { timeoutMs: Number(opts.timeout), headers };
const json = (schema, msg) => JSON.stringify(toJson(schema, msg, { registry }));
const print = (line) => process.stdout.write(line + "\n");

const [cmd, ...args] = positionals;
const m = (name) => service.method[name];
try {
  switch (cmd) {
    case "me": {
      const res = await authClient.getCurrentUser({}, callOpts);
      print(json(authService.method.getCurrentUser.output, res));
      break;
    }
    case "list": {
      const res = await client.listConversations({}, callOpts);
      print(json(m("listConversations").output, res));
      break;
    }
    case "get": {
      const res = await client.getConversation({ id: args[0] }, callOpts);
      print(json(m("getConversation").output, res));
      break;
    }
    case "create": {
      const res = await client.createConversation({ conversation: { title: args[0] } }, callOpts);
      print(json(m("createConversation").output, res));
      break;
    }
    case "send": {
      const res = await client.sendMessage({ conversationId: args[0], content: args[1] }, callOpts);
      print(json(m("sendMessage").output, res));
      break;
    }
    case "stream": {
      const [conversationId, messageId] = args;
      const minDeltas = Number(args[2] ?? 3);
      const schema = m("streamReply").output;
      let deltas = 0;
      let text = "";
      let lastSeq = 0;
      let done = null;
      for await (const ev of client.streamReply({ conversationId, messageId }, callOpts)) {
        print(json(schema, ev));
        // Seqs of one attempt follow each other; a reset (a new attempt)
        // jumps ahead and drops the text so far.
        if (ev.kind.case === "reset" ? ev.seq <= lastSeq : ev.seq !== lastSeq + 1) {
          die(`event seq ${ev.seq} (${ev.kind.case}) after ${lastSeq}`);
        }
        lastSeq = ev.seq;
        if (done) die("an event came after `done`");
        switch (ev.kind.case) {
          case "delta":
            deltas += 1;
            text += ev.kind.value;
            break;
          case "reset":
            deltas = 0;
            text = "";
            break;
          case "usage":
            if (ev.kind.value.completionTokens < 1) die("usage without completion tokens");
            break;
          case "done":
            done = ev.kind.value;
            break;
          case "error":
            die(`reply failed: ${ev.kind.value.code}: ${ev.kind.value.message}`);
            break;
          default:
            die(`event ${ev.seq} has no kind`);
        }
      }
      if (!done) die("the stream ended without a `done` event");
      if (deltas < minDeltas) die(`only ${deltas} delta events, expected at least ${minDeltas}`);
      if (done.content !== text) {
        die(`done.content ${JSON.stringify(done.content)} is not the deltas' text ${JSON.stringify(text)}`);
      }
      process.stderr.write(`grpc-web-client: stream ok: ${deltas} deltas then done (${text.length} chars)\n`);
      break;
    }
    case "error-get": {
      try {
        const res = await client.getConversation({ id: args[0] }, callOpts);
        die(`GetConversation(${args[0]}) succeeded, expected an error: ${json(m("getConversation").output, res)}`);
      } catch (e) {
        const err = ConnectError.from(e);
        print(JSON.stringify({ code: err.code, codeName: Code[err.code], message: err.rawMessage }));
      }
      break;
    }
    default:
      die(`unknown command ${cmd}`);
  }
} catch (e) {
  const err = ConnectError.from(e);
  die(`${cmd} ${args.join(" ")}: ${Code[err.code] ?? err.code}: ${err.rawMessage}`);
}
