#!/usr/bin/env node
// make_lease_pdf.js: writes the article's merged lease to stdout, a valid
// PDF 1.7 of 7 contract pages and 3 annexes (Hausordnung,
// Übergabeprotokoll-Vorlage, Datenschutzhinweise) with continuous page
// numbers.  1.7 because Yousign takes PDF 1.6 or later only; nothing in the
// file needs more than 1.4, so Skribble reads it as before.  The last page
// has room at the bottom for the signature fields Yousign needs (qes_sign
// places them there, see vorgangstypen.signature_field).
// Usage: node make_lease_pdf.js [pad-to-bytes] [--provider skribble|yousign] > lease.pdf
// (--provider names the trust service in § 7; default Skribble)
'use strict';

const args = process.argv.slice(2);
const pi = args.findIndex((a) => a === '--provider' || a.startsWith('--provider='));
const provider = pi < 0 ? 'skribble'
  : args[pi].includes('=') ? args.splice(pi, 1)[0].split('=')[1] : args.splice(pi, 2)[1];
const service = { skribble: 'Skribble', yousign: 'Yousign' }[provider];
if (!service) {
  process.stderr.write(`make_lease_pdf.js: unknown provider ${provider} (skribble or yousign)\n`);
  process.exit(2);
}
const padTo = Number(args[0] || 0);

const contract = [
  ['Mietvertrag über Wohnraum', [
    'zwischen Hausverwaltung Eppendorf GmbH (Vermieterin, vertreten durch Petra Hansen)',
    'und Anna Becker sowie Jonas Wolf (Mieter), gemeinsam als Gesamtschuldner.',
    '§ 1 Mietsache: Eppendorfer Landstraße 42, 20249 Hamburg, 2. OG links,',
    '3 Zimmer, Küche, Bad, ca. 78 m² Wohnfläche, Kellerraum Nr. 7.']],
  ['§ 2 Mietzeit', ['Das Mietverhältnis beginnt am 1. April 2026 und ist auf drei Jahre befristet',
    '(§ 575 BGB). Die Schriftform nach § 550 BGB wird durch qualifizierte',
    'elektronische Signaturen aller Parteien gewahrt (§ 126a BGB).']],
  ['§ 3 Miete und Nebenkosten', ['Die Nettokaltmiete beträgt monatlich 1.640,00 EUR.',
    'Vorauszahlung auf die Betriebskosten: 260,00 EUR, Heizkosten: 95,00 EUR.']],
  ['§ 4 Mietsicherheit', ['Die Mieter leisten eine Kaution von drei Nettokaltmieten (4.920,00 EUR).']],
  ['§ 5 Schönheitsreparaturen und Instandhaltung', ['Es gelten die gesetzlichen Regelungen.']],
  ['§ 6 Hausordnung, Tierhaltung, Untervermietung', ['Die Hausordnung (Anlage 1) ist Bestandteil dieses Vertrages.']],
  ['§ 7 Schlussbestimmungen, Unterschriften', ['Anlagen: 1 Hausordnung, 2 Übergabeprotokoll-Vorlage, 3 Datenschutzhinweise.',
    `Unterschriften: qualifizierte elektronische Signaturen (${service}, eIDAS).`]],
];
const annexes = [
  ['Anlage 1: Hausordnung', ['Ruhezeiten 22 bis 7 Uhr. Treppenhaus und Keller sind freizuhalten.']],
  ['Anlage 2: Übergabeprotokoll-Vorlage', ['Zählerstände, Schlüssel, Zustand der Räume bei Übergabe.']],
  ['Anlage 3: Datenschutzhinweise', ['Verarbeitung personenbezogener Daten nach Art. 6 Abs. 1 lit. b DSGVO.']],
];
const pages = contract.concat(annexes);

// PDF strings in WinAnsiEncoding: umlauts and § as octal escapes
function pdfText(s) {
  let out = '';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '(' || ch === ')' || ch === '\\') out += '\\' + ch;
    else if (c < 128) out += ch;
    else if (c < 256) out += '\\' + c.toString(8).padStart(3, '0');
    else out += '?';
  }
  return out;
}

function pageStream(title, lines, n) {
  const ops = ['BT', '/F1 16 Tf', '72 770 Td', `(${pdfText(title)}) Tj`, '/F1 11 Tf', '0 -28 Td'];
  for (const l of lines) ops.push(`(${pdfText(l)}) Tj`, '0 -16 Td');
  ops.push('ET', 'BT', '/F1 9 Tf', '280 40 Td', `(Seite ${n} von ${pages.length}) Tj`, 'ET');
  return ops.join('\n');
}

const objects = [];   // index i holds object number i + 1
const add = (body) => { objects.push(body); return objects.length; };
const catalog = add(null);
const pagesObj = add(null);
const font = add('<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>');
const kids = pages.map(([title, lines], i) => {
  const content = pageStream(title, lines, i + 1);
  const stream = add(`<< /Length ${Buffer.byteLength(content, 'latin1')} >>\nstream\n${content}\nendstream`);
  return add(`<< /Type /Page /Parent ${pagesObj} 0 R /MediaBox [0 0 595 842] ` +
             `/Resources << /Font << /F1 ${font} 0 R >> >> /Contents ${stream} 0 R >>`);
});
objects[catalog - 1] = `<< /Type /Catalog /Pages ${pagesObj} 0 R >>`;
objects[pagesObj - 1] = `<< /Type /Pages /Kids [${kids.map((k) => `${k} 0 R`).join(' ')}] /Count ${kids.length} >>`;

let pdf = '%PDF-1.7\n%\xe2\xe3\xcf\xd3\n';
const offsets = [];
objects.forEach((body, i) => {
  offsets.push(Buffer.byteLength(pdf, 'latin1'));
  pdf += `${i + 1} 0 obj\n${body}\nendobj\n`;
});
// optional padding (a comment) for size benchmarks, before the xref
if (padTo > 0) {
  const room = padTo - Buffer.byteLength(pdf, 'latin1') - 200 - 20 * objects.length;
  if (room > 0) pdf += '%' + 'x'.repeat(room - 2) + '\n';
}
const xref = Buffer.byteLength(pdf, 'latin1');
pdf += `xref\n0 ${objects.length + 1}\n0000000000 65535 f \n`;
pdf += offsets.map((o) => `${String(o).padStart(10, '0')} 00000 n \n`).join('');
pdf += `trailer\n<< /Size ${objects.length + 1} /Root ${catalog} 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
process.stdout.write(Buffer.from(pdf, 'latin1'));
