// Reads what an ESP32 app image says about itself from its first bytes, in the browser, so
// that the upload form can show the version and project the server will read when those
// fields are left empty. The server validates the whole image; this is only a hint.
const CHIPS: Record<number, string> = {
  0: 'esp32', 2: 'esp32s2', 5: 'esp32c3', 9: 'esp32s3', 12: 'esp32c2', 13: 'esp32c6', 16: 'esp32h2', 18: 'esp32p4', 20: 'esp32c61', 23: 'esp32c5',
};

export interface ImageHint {
  chip: string | null;
  version: string;
  project: string;
  idf: string;
}

function cString(bytes: Uint8Array, start: number, len: number): string {
  let end = start;
  while (end < start + len && end < bytes.length && bytes[end] !== 0) end++;
  return new TextDecoder().decode(bytes.subarray(start, end));
}

export async function readImageHint(file: File): Promise<ImageHint | null> {
  try {
    const bytes = new Uint8Array(await file.slice(0, 320).arrayBuffer());
    if (bytes.length < 32 + 256 || bytes[0] !== 0xe9) return null;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const chipId = view.getUint16(12, true);
    if (view.getUint32(32, true) !== 0xabcd5432) return { chip: CHIPS[chipId] ?? null, version: '', project: '', idf: '' };
    return {
      chip: CHIPS[chipId] ?? null,
      version: cString(bytes, 32 + 16, 32),
      project: cString(bytes, 32 + 48, 32),
      idf: cString(bytes, 32 + 112, 32),
    };
  } catch {
    return null;
  }
}
