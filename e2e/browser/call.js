// Call page of the end-to-end call tests: window.rt speaks the server's /webrtc Socket.IO
// protocol and runs the RTCPeerConnections (TURN relay only, Chromium's fake camera and
// microphone), so a Node test drives a real browser call through page.evaluate.
//
// Every client→server event is emitted with an ack: {ok:true, ...} | {ok:false, error:{code, message}}.
//
//   caller                                   server                                callee
//   call:ice-servers {} ───────────────────► ack {iceServers, ttl}
//   call:start {conversationId, media} ────► ack {callId}
//                                            call:incoming {callId, conversationId, from, media} ──►
//                                            ◄──────────────────────────── call:accept {callId} (or call:decline)
//   ◄── call:participant-joined {callId, userId}           (call:declined {callId, userId} on decline)
//   RTCPeerConnection({iceServers, iceTransportPolicy: "relay"}) + getUserMedia tracks
//   call:signal {callId, to, signal: {type: "offer", sdp}} ──► call:signal {callId, from, signal} ──►
//                                            ◄── call:signal {type: "answer", sdp} ◄── (same pc set-up)
//   call:signal {type: "candidate", candidate: RTCIceCandidate.toJSON()}  both ways, trickled;
//       candidates that arrive before the remote description are queued until it is set.
//   call:hangup {callId} ──► call:participant-left {callId, userId} / call:ended {callId, reason}
//
//   recording:request {callId} ──► ack {recordingId, consentDeadline}
//   every member: recording:consent-request {recordingId, callId, requestedBy, deadline}
//              ──► recording:consent {recordingId, consent: true|false}
//   then recording:started {recordingId, callId} | recording:cancelled {recordingId, reason};
//   recording:stop {recordingId} ──► recording:stopped {recordingId, reason}
//
// Group calls are a mesh: members already in the call offer to each newcomer
// (call:participant-joined); a newcomer only answers, so two peers never both offer.
// The transport is injectable: rt.attach(socket, me) takes any object with
// emitWithAck(event, payload) and onAny((event, payload) => …), as a socket.io-client Socket has.
(() => {
  const rt = {
    socket: null,
    me: null, // our user id (the token's sub)
    events: [], // every server event: {event, payload, at}
    acks: [], // every emit: {event, payload, ack, at}
    callId: null,
    peers: new Map(), // userId → {pc, callId, pending: [candidates], chain: Promise}; kept (closed) until the next call
    consent: null, // answer to recording:consent-request: true | false | null (do not answer)
    errors: [], // what went wrong in the page (getUserMedia, a signalling step, a refused signal)
  };
  let inCall = false;
  let rtcConfig = null;
  let media = null; // Promise<MediaStream> of the current call
  const incoming = []; // call:incoming not yet taken by acceptNext/declineNext

  const log = (...a) => console.log("[rt]", ...a);
  const fail = (what) => (rt.errors.push(what), console.error("[rt]", what));
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const subject = (token) => JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub;

  async function until(what, check, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = check();
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  // ---- transport

  rt.connect = (baseUrl, token) =>
    new Promise((ok, fail) => {
      const socket = io(baseUrl + "/webrtc", {
        auth: { token },
        transports: ["websocket"],
        reconnection: false,
        forceNew: true,
        ackTimeout: 10_000,
      });
      socket.once("connect", () => (rt.attach(socket, subject(token)), ok(socket.id)));
      socket.once("connect_error", (e) => (socket.close(), fail(new Error(`connect_error: ${e.message}`))));
    });

  rt.attach = (socket, me) => {
    rt.socket = socket;
    rt.me = me;
    socket.onAny((event, payload) => {
      rt.events.push({ event, payload, at: Date.now() });
      log("←", event, event === "call:signal" ? `${payload.signal?.type} from ${payload.from}` : JSON.stringify(payload));
      try {
        handlers[event]?.(payload);
      } catch (e) {
        fail(`${event} handler failed: ${e.message}`);
      }
    });
  };

  rt.disconnect = () => {
    endCall();
    rt.socket?.close?.();
    rt.socket = null;
  };

  /** Emits `event` and resolves with the server's ack, whatever it says. */
  rt.emit = async (event, payload) => {
    const ack = await rt.socket.emitWithAck(event, payload);
    rt.acks.push({ event, payload, ack, at: Date.now() });
    return ack;
  };

  /** Like emit, but a refusal throws "<event> refused: <code>: <message>". */
  async function must(event, payload) {
    const ack = await rt.emit(event, payload);
    if (!ack?.ok) throw new Error(`${event} refused: ${ack?.error?.code}: ${ack?.error?.message}`);
    return ack;
  }

  /** The first `event` logged at or after `since` (ms since epoch); its payload. */
  rt.waitFor = (event, { since = 0, timeoutMs = 10_000 } = {}) =>
    until(event, () => rt.events.find((e) => e.event === event && e.at >= since), timeoutMs).then((e) => e.payload);

  // ---- calls

  rt.iceServers = () => must("call:ice-servers", {}); // {ok, iceServers, ttl}

  async function prepare(kind) {
    endCall();
    rt.peers.clear();
    const { iceServers } = await rt.iceServers();
    rtcConfig = { iceServers, iceTransportPolicy: "relay" };
    media = navigator.mediaDevices.getUserMedia({ audio: true, video: kind !== "audio" });
    media.catch((e) => fail(`getUserMedia failed: ${e.message}`));
    inCall = true;
  }

  /** Starts a call in `conversationId`; resolves with its callId. */
  rt.call = async (conversationId, kind = "video") => {
    await prepare(kind);
    rt.callId = (await must("call:start", { conversationId, media: kind })).callId;
    return rt.callId;
  };

  const nextIncoming = (timeoutMs) => until("call:incoming", () => incoming.shift(), timeoutMs);

  /** Waits for the next call:incoming (or takes one already received) and accepts it; its callId. */
  rt.acceptNext = async (timeoutMs = 10_000) => {
    const inc = await nextIncoming(timeoutMs);
    await prepare(inc.media);
    rt.callId = inc.callId;
    try {
      await must("call:accept", { callId: inc.callId });
    } catch (e) {
      endCall();
      throw e;
    }
    return inc.callId;
  };

  rt.declineNext = async (timeoutMs = 10_000) => {
    const inc = await nextIncoming(timeoutMs);
    await must("call:decline", { callId: inc.callId });
    return inc.callId;
  };

  rt.hangup = async () => {
    const callId = rt.callId;
    try {
      return callId ? await must("call:hangup", { callId }) : { ok: true };
    } finally {
      endCall();
    }
  };

  function endCall() {
    for (const p of rt.peers.values()) p.pc.close();
    media?.then((s) => s.getTracks().forEach((t) => t.stop()), () => {});
    media = null;
    inCall = false;
    rt.callId = null;
  }

  function send(callId, to, signal) {
    return rt.emit("call:signal", { callId, to, signal }).then(
      (ack) => ack?.ok || fail(`call:signal ${signal.type} to ${to} refused: ${JSON.stringify(ack)}`),
      (e) => fail(`call:signal ${signal.type} to ${to} failed: ${e.message}`),
    );
  }

  /** The peer connection with `userId`, created with our tracks on first use. */
  function peer(userId, callId) {
    let p = rt.peers.get(userId);
    if (p && p.pc.signalingState !== "closed") return p;
    const pc = new RTCPeerConnection(rtcConfig);
    p = { pc, callId, pending: [], chain: Promise.resolve() };
    rt.peers.set(userId, p);
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) send(callId, userId, { type: "candidate", candidate: candidate.toJSON() });
    };
    pc.onconnectionstatechange = () => log(`pc ${userId}: ${pc.connectionState}`);
    pc.oniceconnectionstatechange = () => log(`pc ${userId}: ice ${pc.iceConnectionState}`);
    const stream = media;
    serially(p, async () => {
      const s = await stream;
      for (const track of s.getTracks()) pc.addTrack(track, s);
    });
    return p;
  }

  // One signalling step at a time per peer: a candidate never overtakes the offer or answer.
  function serially(p, step) {
    p.chain = p.chain.then(step).catch((e) => fail(`signalling step failed: ${e.message}`));
  }

  async function remoteDescription(p, description) {
    await p.pc.setRemoteDescription(description);
    for (const c of p.pending.splice(0)) await p.pc.addIceCandidate(c);
  }

  const handlers = {
    "call:incoming": (m) => incoming.push(m),
    "call:participant-joined": ({ callId, userId }) => {
      const known = rt.peers.get(userId);
      if (!inCall || userId === rt.me || (known && known.pc.signalingState !== "closed")) return;
      const p = peer(userId, callId);
      serially(p, async () => {
        await p.pc.setLocalDescription(await p.pc.createOffer());
        await send(callId, userId, { type: "offer", sdp: p.pc.localDescription.sdp });
      });
    },
    "call:signal": ({ callId, from, signal }) => {
      if (!inCall) return log(`call:signal from ${from} outside a call, ignored`);
      const p = peer(from, callId);
      serially(p, async () => {
        if (signal.type === "offer") {
          await remoteDescription(p, { type: "offer", sdp: signal.sdp });
          await p.pc.setLocalDescription(await p.pc.createAnswer());
          await send(callId, from, { type: "answer", sdp: p.pc.localDescription.sdp });
        } else if (signal.type === "answer") {
          await remoteDescription(p, { type: "answer", sdp: signal.sdp });
        } else if (signal.type === "candidate") {
          if (p.pc.remoteDescription) await p.pc.addIceCandidate(signal.candidate);
          else p.pending.push(signal.candidate);
        }
      });
    },
    "call:participant-left": ({ userId }) => rt.peers.get(userId)?.pc.close(),
    "call:ended": ({ callId }) => callId === rt.callId && endCall(),
    "recording:consent-request": ({ recordingId }) => {
      if (rt.consent === null) return;
      rt.emit("recording:consent", { recordingId, consent: rt.consent }).then(
        (ack) => ack?.ok || fail(`recording:consent refused: ${JSON.stringify(ack)}`),
        (e) => fail(`recording:consent failed: ${e.message}`),
      );
    },
  };

  // ---- what a test looks at

  const pick = (userId) => (userId === undefined ? [...rt.peers.values()][0] : rt.peers.get(userId));

  /** {connectionState, iceConnectionState, signalingState} of the pc with `userId` (default: the first), or null. */
  rt.state = (userId) => {
    const pc = pick(userId)?.pc;
    return pc ? { connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState, signalingState: pc.signalingState } : null;
  };

  /** Received/sent RTP bytes and the selected candidate pair of the pc with `userId` (default: the first), or null. */
  rt.stats = async (userId) => {
    const pc = pick(userId)?.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    let bytesReceived = 0;
    let bytesSent = 0;
    const received = { audio: 0, video: 0 };
    let pair = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp") {
        bytesReceived += s.bytesReceived ?? 0;
        received[s.kind] += s.bytesReceived ?? 0;
      }
      if (s.type === "outbound-rtp") bytesSent += s.bytesSent ?? 0;
      if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    if (!pair) report.forEach((s) => s.type === "candidate-pair" && s.state === "succeeded" && s.nominated && (pair = s));
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    return {
      bytesReceived, // inbound-rtp, all tracks
      audioBytesReceived: received.audio,
      videoBytesReceived: received.video,
      bytesSent, // outbound-rtp
      pairState: pair?.state ?? null,
      localCandidateType: local?.candidateType ?? null,
      remoteCandidateType: remote?.candidateType ?? null,
      relayProtocol: local?.relayProtocol ?? null, // "udp" | "tcp": how we reach the TURN server
    };
  };

  // ---- recording

  rt.setConsent = (value) => {
    rt.consent = value;
  };
  rt.requestRecording = () => must("recording:request", { callId: rt.callId }); // {ok, recordingId, consentDeadline}
  rt.stopRecording = (recordingId) => must("recording:stop", { recordingId });

  window.rt = rt;
})();
