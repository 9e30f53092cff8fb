// gsgan splat viewer: WebGL2, one instanced quad per Gaussian, sorted back to front on the CPU.
// The server sends activated splats (centre, rgba, 3D covariance); this file only projects (EWA), sorts and blends.
"use strict";

const BACKGROUND = [0.118, 0.118, 0.118];
const FOV_Y = 30 * Math.PI / 180;

const VERTEX_SHADER = `#version 300 es
precision highp float;
layout(location = 0) in vec2 a_corner;
layout(location = 1) in vec3 a_center;
layout(location = 2) in vec4 a_color;
layout(location = 3) in vec3 a_cov0;   // xx, xy, xz
layout(location = 4) in vec3 a_cov1;   // yy, yz, zz
uniform mat4 u_view;                   // file world -> OpenCV camera (x right, y down, z forward)
uniform vec2 u_focal;                  // pixels
uniform vec2 u_viewport;               // pixels
out vec4 v_color;
out vec2 v_sigma;                      // position in units of standard deviations along the 2D principal axes
void main() {
  vec4 cam = u_view * vec4(a_center, 1.0);
  if (cam.z < 0.02) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
  mat3 cov3 = mat3(a_cov0.x, a_cov0.y, a_cov0.z, a_cov0.y, a_cov1.x, a_cov1.y, a_cov0.z, a_cov1.y, a_cov1.z);
  float z = cam.z;
  // EWA: Jacobian of the perspective projection (columns), then cov2d = J W Sigma W^T J^T.
  mat3 J = mat3(u_focal.x / z, 0.0, 0.0,  0.0, u_focal.y / z, 0.0,
                -u_focal.x * cam.x / (z * z), -u_focal.y * cam.y / (z * z), 0.0);
  mat3 T = J * mat3(u_view);
  mat3 cov2 = T * cov3 * transpose(T);
  float a = cov2[0][0] + 0.3, b = cov2[0][1], c = cov2[1][1] + 0.3;
  float mid = 0.5 * (a + c);
  float rad = length(vec2(0.5 * (a - c), b));
  float l1 = mid + rad, l2 = max(mid - rad, 0.0);
  if (l2 <= 0.0) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
  vec2 axis = abs(b) > 1e-9 ? normalize(vec2(b, l1 - a)) : (a >= c ? vec2(1.0, 0.0) : vec2(0.0, 1.0));
  vec2 v1 = 3.0 * sqrt(l1) * axis;
  vec2 v2 = 3.0 * sqrt(l2) * vec2(-axis.y, axis.x);
  vec2 center = u_focal * cam.xy / z + 0.5 * u_viewport;
  vec2 pixel = center + a_corner.x * v1 + a_corner.y * v2;
  gl_Position = vec4(pixel.x / u_viewport.x * 2.0 - 1.0, 1.0 - pixel.y / u_viewport.y * 2.0, 0.0, 1.0);
  v_color = a_color;
  v_sigma = 3.0 * a_corner;
}`;

const FRAGMENT_SHADER = `#version 300 es
precision highp float;
in vec4 v_color;
in vec2 v_sigma;
out vec4 fragColor;
void main() {
  float alpha = min(0.99, v_color.a * exp(-0.5 * dot(v_sigma, v_sigma)));
  if (alpha < 1.0 / 255.0) discard;
  fragColor = vec4(v_color.rgb * alpha, alpha);   // premultiplied, blended back to front
}`;

function showError(message) {
  const status = document.getElementById("status");
  status.textContent = message;
  status.className = "error";
  document.body.dataset.state = "error";
  document.title = "gsgan viewer: error";
  console.error(message);
}

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error("shader: " + gl.getShaderInfoLog(shader));
  return shader;
}

// --- camera (EG3D orbit convention: yaw/pitch around a target, OpenCV camera axes) --------------------------
function normalize(v) { const n = Math.hypot(v[0], v[1], v[2]) || 1; return [v[0] / n, v[1] / n, v[2] / n]; }
function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

// World-to-camera (column-major 4x4) for a camera at `eye` looking at `target`, EG3D-world up = +y.
function lookAtWorldToCamera(eye, target) {
  const f = normalize([target[0] - eye[0], target[1] - eye[1], target[2] - eye[2]]);
  const r = normalize(cross(f, [0, 1, 0]));   // -(up x forward)
  const d = cross(f, r);                       // camera y (down)
  const rows = [r, d, f];
  const m = new Float32Array(16);
  for (let i = 0; i < 3; i++) {
    m[0 + i] = rows[i][0]; m[4 + i] = rows[i][1]; m[8 + i] = rows[i][2];
    m[12 + i] = -dot(rows[i], eye);
  }
  m[15] = 1;
  return m;
}

// The file's frame: "opencv" files (y down, z forward; what gen_videos exports) map to EG3D's y-up frame by
// diag(1, -1, -1); "eg3d" files are already y-up. The view matrix folds this in.
function fileToEg3d(frame) { return frame === "eg3d" ? [1, 1, 1] : [1, -1, -1]; }

function main() {
  const canvas = document.getElementById("canvas");
  const gl = canvas.getContext("webgl2", { antialias: false, premultipliedAlpha: false, preserveDrawingBuffer: true });
  if (!gl) { showError("This browser has no WebGL2; the viewer needs it."); return; }
  fetch("scene.json").then(r => r.json()).then(meta => {
    if (meta.error) { showError(meta.error); return null; }
    return fetch("scene.bin").then(r => r.arrayBuffer()).then(buf => start(gl, canvas, meta, new Float32Array(buf)));
  }).catch(err => showError("Could not load the scene: " + err));
}

function start(gl, canvas, meta, data) {
  const K = meta.floats_per_splat, count = meta.count;
  if (data.length !== K * count) { showError(`Corrupt scene buffer: expected ${K * count} floats, got ${data.length}`); return; }
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX_SHADER));
  gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT_SHADER));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) { showError("WebGL link error: " + gl.getProgramInfoLog(program)); return; }
  gl.useProgram(program);
  const vao = gl.createVertexArray();
  gl.bindVertexArray(vao);
  const quad = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, quad);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
  gl.enableVertexAttribArray(0);
  gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
  const instances = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, instances);
  const layout = [[1, 3, 0], [2, 4, 3], [3, 3, 7], [4, 3, 10]];  // location, size, float offset
  for (const [loc, size, offset] of layout) {
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, size, gl.FLOAT, false, K * 4, offset * 4);
    gl.vertexAttribDivisor(loc, 1);
  }
  const uView = gl.getUniformLocation(program, "u_view");
  const uFocal = gl.getUniformLocation(program, "u_focal");
  const uViewport = gl.getUniformLocation(program, "u_viewport");
  gl.disable(gl.DEPTH_TEST);
  gl.enable(gl.BLEND);
  gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);

  const flip = fileToEg3d(meta.frame);
  const target0 = meta.center.map((c, i) => c * flip[i]);
  const distance0 = Math.max(meta.radius * 1.25 / Math.tan(FOV_Y / 2), 1e-3);
  const view = { yaw: Math.PI / 2, pitch: Math.PI / 2, distance: distance0, target: target0.slice() };
  const sorted = new Float32Array(data.length);
  const depthKeys = new Uint32Array(count), order = new Uint32Array(count), counts = new Uint32Array(65537);
  let lastSortView = null, firstFrame = true;

  function viewMatrix() {
    const s = Math.sin(view.pitch), eye = [
      view.target[0] + view.distance * s * Math.cos(Math.PI - view.yaw),
      view.target[1] + view.distance * Math.cos(view.pitch),
      view.target[2] + view.distance * s * Math.sin(Math.PI - view.yaw)];
    const m = lookAtWorldToCamera(eye, view.target);
    for (let col = 0; col < 3; col++) for (let row = 0; row < 3; row++) m[col * 4 + row] *= flip[col];
    return m;
  }

  // 16-bit counting sort of view depth, far to near, then reorder the instance buffer.
  function sortSplats(m) {
    let lo = Infinity, hi = -Infinity;
    const depth = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      const z = m[2] * data[K * i] + m[6] * data[K * i + 1] + m[10] * data[K * i + 2] + m[14];
      depth[i] = z; if (z < lo) lo = z; if (z > hi) hi = z;
    }
    const scale = hi > lo ? 65535 / (hi - lo) : 0;
    counts.fill(0);
    for (let i = 0; i < count; i++) { depthKeys[i] = 65535 - Math.floor((depth[i] - lo) * scale); counts[depthKeys[i] + 1]++; }
    for (let k = 1; k < counts.length; k++) counts[k] += counts[k - 1];
    for (let i = 0; i < count; i++) order[counts[depthKeys[i]]++] = i;
    for (let j = 0; j < count; j++) sorted.set(data.subarray(K * order[j], K * order[j] + K), K * j);
    gl.bindBuffer(gl.ARRAY_BUFFER, instances);
    gl.bufferData(gl.ARRAY_BUFFER, sorted, gl.DYNAMIC_DRAW);
  }

  function frame() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.floor(canvas.clientWidth * dpr)), h = Math.max(1, Math.floor(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const m = viewMatrix();
    const key = m.join(",");
    if (key !== lastSortView) { sortSplats(m); lastSortView = key; }
    const focal = 0.5 * h / Math.tan(FOV_Y / 2);
    gl.viewport(0, 0, w, h);
    gl.clearColor(BACKGROUND[0], BACKGROUND[1], BACKGROUND[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.uniformMatrix4fv(uView, false, m);
    gl.uniform2f(uFocal, focal, focal);
    gl.uniform2f(uViewport, w, h);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, count);
    if (firstFrame) {
      firstFrame = false;
      document.getElementById("status").textContent = `${meta.file}: ${count.toLocaleString()} splats`;
      document.body.dataset.state = "ready";
      document.title = "gsgan viewer: ready";
    }
  }

  let drag = null, needsDraw = true;
  canvas.addEventListener("pointerdown", e => { drag = { x: e.clientX, y: e.clientY, pan: e.shiftKey || e.button === 2 }; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointerup", () => { drag = null; });
  canvas.addEventListener("contextmenu", e => e.preventDefault());
  canvas.addEventListener("pointermove", e => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    drag.x = e.clientX; drag.y = e.clientY;
    if (drag.pan) {
      const m = viewMatrix(), k = view.distance * 2 * Math.tan(FOV_Y / 2) / canvas.clientHeight;
      for (let i = 0; i < 3; i++) view.target[i] -= k * (dx * m[i * 4] + dy * m[i * 4 + 1]) * flip[i];
    } else {
      view.yaw += dx * 0.008;
      view.pitch = Math.min(Math.PI - 0.05, Math.max(0.05, view.pitch - dy * 0.008));
    }
    needsDraw = true;
  });
  canvas.addEventListener("wheel", e => { e.preventDefault(); view.distance *= Math.exp(e.deltaY * 0.001); needsDraw = true; }, { passive: false });
  window.addEventListener("keydown", e => {
    if (e.key === "r") { Object.assign(view, { yaw: Math.PI / 2, pitch: Math.PI / 2, distance: distance0, target: target0.slice() }); needsDraw = true; }
  });
  window.addEventListener("resize", () => { needsDraw = true; });
  (function loop() { if (needsDraw) { needsDraw = false; frame(); } requestAnimationFrame(loop); })();
}

main();
