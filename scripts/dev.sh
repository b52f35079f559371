#!/usr/bin/env bash
# Brings up the local stack, seeds a demo conversation and runs the data plane in role
# `all` on 127.0.0.1:3000, printing the URL and ready-made tokens. Ctrl-C stops the data
# plane; `scripts/stack.sh down` stops the stack.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/stack.sh up
eval "$(scripts/stack.sh env)"
export JWT_SECRET=${JWT_SECRET:-dev-secret-change-me}
export JWT_ISSUER=${JWT_ISSUER:-realtime-dev}
export JWT_AUDIENCE=${JWT_AUDIENCE:-realtime}
export LISTEN_ADDR=${LISTEN_ADDR:-127.0.0.1:3000}
export RUST_LOG=${RUST_LOG:-info,rdkafka=warn}

cargo build --release --bins -q
seed=$(target/release/realtime-dev seed --tenant demo --conversation general --users alice,bob)
cat <<EOM

Realtime data plane (role all)
  Socket.IO:  http://$LISTEN_ADDR/chat   (namespace /chat, auth {"token": "<JWT>"})
  health:     http://$LISTEN_ADDR/readyz   metrics: http://$LISTEN_ADDR/metrics
  seeded:     tenant demo, conversation "general", users alice (owner) and bob
$(echo "$seed" | sed -n 's/^TOKEN_/  token /p' | sed 's/=/: /')

Try it (in e2e/, after npm ci):
  node -e 'const s=require("socket.io-client").io("http://$LISTEN_ADDR/chat",{auth:{token:process.argv[1]}});s.on("connect",async()=>{console.log(await s.emitWithAck("room:join",{conversationId:"general"}));console.log(await s.emitWithAck("message:send",{conversationId:"general",clientMessageId:String(Date.now()),content:{type:"text",text:"hi"}}));s.on("message:persisted",m=>{console.log("persisted",m);process.exit(0)})})' <alice's token>

EOM
exec target/release/realtime --role all
