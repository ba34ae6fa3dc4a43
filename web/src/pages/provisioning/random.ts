// Random secrets made in the browser (crypto.getRandomValues): the server stores only their
// hash, so the page shows the value once, right after it was saved.
const ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789';

export function randomSecret(length = 32): string {
  const bytes = new Uint8Array(length);
  crypto.getRandomValues(bytes);
  // 256 is not a multiple of the alphabet's size; the bias is negligible for a secret this long.
  return Array.from(bytes, (b) => ALPHABET[b % ALPHABET.length]).join('');
}
