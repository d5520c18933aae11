"""``captioner import``: models trained with the seed's code (yunjey's pytorch-tutorial
``image_captioning``) and with sgrvinod's Show, Attend and Tell tutorial — built here with
faithful copies of the two projects' modules, random weights, saved the way each project
saves them — caption exactly as the projects' own sampling code does, word for word with the
same per-step log-probabilities; pickles that smuggle code or any class outside the list are
refused in one line and their payload never runs.

The copies below are the oracle. Both projects are MIT-licensed:
- yunjey/pytorch-tutorial, tutorials/03-advanced/image_captioning (model.py, sample.py,
  build_vocab.py), Copyright (c) 2017 its authors (Yunjey Choi);
- sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning (models.py, caption.py, utils.py),
  Copyright (c) 2018 Sagar Vinodababu.
Each change from the originals is marked ``# changed:`` with its reason.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import runpy
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as transforms
from PIL import Image
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torchvision import models

from captioner import Captioner
from captioner.cli import main
from captioner.data.images import build_transform
from captioner.decoding import beam_search
from captioner.importers import CheckpointImportError, import_seed, import_show_attend_tell
from captioner.importers.show_attend_tell import ALLOWED

from conftest import TINY

# torch's legacy-format save of the copies' classes (defined here, pickled as models.*) cannot find their source.
pytestmark = pytest.mark.filterwarnings("ignore:Couldn't retrieve source code:UserWarning")

IMAGES = [TINY / "images" / name for name in ("astronaut.jpg", "camera.jpg", "chelsea.jpg", "grace_hopper.jpg")]
CAPTIONS = TINY / "captions.csv"


# =====================================================================================
# yunjey/pytorch-tutorial, tutorials/03-advanced/image_captioning (MIT)
# =====================================================================================

# --- build_vocab.py ------------------------------------------------------------------
class Vocabulary(object):
    """Simple vocabulary wrapper."""
    def __init__(self):
        self.word2idx = {}
        self.idx2word = {}
        self.idx = 0

    def add_word(self, word):
        if not word in self.word2idx:
            self.word2idx[word] = self.idx
            self.idx2word[self.idx] = word
            self.idx += 1

    def __call__(self, word):
        if not word in self.word2idx:
            return self.word2idx['<unk>']
        return self.word2idx[word]

    def __len__(self):
        return len(self.word2idx)


Vocabulary.__module__ = "__main__"  # changed: build_vocab.py runs as a script, so pickle names __main__.Vocabulary


def build_vocab(captions, threshold):
    """Build a simple vocabulary wrapper."""
    counter = Counter()
    for caption in captions:  # changed: the fixture's captions, not pycocotools' COCO annotations
        tokens = caption.lower().split()  # changed: str.split, not nltk.tokenize.word_tokenize (not installed)
        counter.update(tokens)

    # If the word frequency is less than 'threshold', then the word is discarded.
    words = [word for word, cnt in counter.items() if cnt >= threshold]

    # Create a vocab wrapper and add some special tokens.
    vocab = Vocabulary()
    vocab.add_word('<pad>')
    vocab.add_word('<start>')
    vocab.add_word('<end>')
    vocab.add_word('<unk>')

    # Add the words to the vocabulary.
    for i, word in enumerate(words):
        vocab.add_word(word)
    return vocab


# --- model.py ------------------------------------------------------------------------
class EncoderCNN(nn.Module):
    def __init__(self, embed_size):
        """Load the pretrained ResNet-152 and replace top fc layer."""
        super(EncoderCNN, self).__init__()
        resnet = models.resnet152(weights=None)  # changed: pretrained=True downloads ImageNet weights (offline here)
        modules = list(resnet.children())[:-1]      # delete the last fc layer.
        self.resnet = nn.Sequential(*modules)
        self.linear = nn.Linear(resnet.fc.in_features, embed_size)
        self.bn = nn.BatchNorm1d(embed_size, momentum=0.01)

    def forward(self, images):
        """Extract feature vectors from input images."""
        with torch.no_grad():
            features = self.resnet(images)
        features = features.reshape(features.size(0), -1)
        features = self.bn(self.linear(features))
        return features


class DecoderRNN(nn.Module):
    def __init__(self, embed_size, hidden_size, vocab_size, num_layers, max_seq_length=20):
        """Set the hyper-parameters and build the layers."""
        super(DecoderRNN, self).__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, vocab_size)
        self.max_seg_length = max_seq_length

    def forward(self, features, captions, lengths):
        """Decode image feature vectors and generates captions."""
        embeddings = self.embed(captions)
        embeddings = torch.cat((features.unsqueeze(1), embeddings), 1)
        packed = pack_padded_sequence(embeddings, lengths, batch_first=True)
        hiddens, _ = self.lstm(packed)
        outputs = self.linear(hiddens[0])
        return outputs

    def sample(self, features, states=None):
        """Generate captions for given image features using greedy search."""
        sampled_ids = []
        inputs = features.unsqueeze(1)
        for i in range(self.max_seg_length):
            hiddens, states = self.lstm(inputs, states)          # hiddens: (batch_size, 1, hidden_size)
            outputs = self.linear(hiddens.squeeze(1))            # outputs:  (batch_size, vocab_size)
            _, predicted = outputs.max(1)                        # predicted: (batch_size)
            sampled_ids.append(predicted)
            inputs = self.embed(predicted)                       # inputs: (batch_size, embed_size)
            inputs = inputs.unsqueeze(1)                         # inputs: (batch_size, 1, embed_size)
        sampled_ids = torch.stack(sampled_ids, 1)                # sampled_ids: (batch_size, max_seq_length)
        return sampled_ids


# --- sample.py -----------------------------------------------------------------------
def load_image(image_path, transform=None):
    image = Image.open(image_path).convert('RGB')
    image = image.resize([224, 224], Image.LANCZOS)

    if transform is not None:
        image = transform(image).unsqueeze(0)

    return image


def sample_main(image, encoder, decoder, vocab):  # changed: main(args) minus argparse, loading and plotting
    # Image preprocessing
    transform = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406),
                             (0.229, 0.224, 0.225))])

    # Prepare an image
    image = load_image(image, transform)
    image_tensor = image

    # Generate an caption from the image
    feature = encoder(image_tensor)
    sampled_ids = decoder.sample(feature)
    sampled_ids = sampled_ids[0].cpu().numpy()          # (1, max_seq_length) -> (max_seq_length)

    # Convert word_ids to words
    sampled_caption = []
    for word_id in sampled_ids:
        word = vocab.idx2word[word_id]
        sampled_caption.append(word)
        if word == '<end>':
            break
    sentence = ' '.join(sampled_caption)
    return sentence, feature  # changed: returned, not printed (the feature for the log-probabilities)


# =====================================================================================
# sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning (MIT)
# =====================================================================================

device = torch.device("cpu")  # changed: CPU here


# --- models.py -----------------------------------------------------------------------
class Encoder(nn.Module):
    """
    Encoder.
    """

    def __init__(self, encoded_image_size=14):
        super(Encoder, self).__init__()
        self.enc_image_size = encoded_image_size

        resnet = torchvision.models.resnet101(weights=None)  # changed: pretrained=True downloads ImageNet weights

        # Remove linear and pool layers (since we're not doing classification)
        modules = list(resnet.children())[:-2]
        self.resnet = nn.Sequential(*modules)

        # Resize image to fixed size to allow input images of variable size
        self.adaptive_pool = nn.AdaptiveAvgPool2d((encoded_image_size, encoded_image_size))

        self.fine_tune()

    def forward(self, images):
        out = self.resnet(images)  # (batch_size, 2048, image_size/32, image_size/32)
        out = self.adaptive_pool(out)  # (batch_size, 2048, encoded_image_size, encoded_image_size)
        out = out.permute(0, 2, 3, 1)  # (batch_size, encoded_image_size, encoded_image_size, 2048)
        return out

    def fine_tune(self, fine_tune=True):
        for p in self.resnet.parameters():
            p.requires_grad = False
        # If fine-tuning, only fine-tune convolutional blocks 2 through 4
        for c in list(self.resnet.children())[5:]:
            for p in c.parameters():
                p.requires_grad = fine_tune


class Attention(nn.Module):
    """
    Attention Network.
    """

    def __init__(self, encoder_dim, decoder_dim, attention_dim):
        super(Attention, self).__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)  # linear layer to transform encoded image
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)  # linear layer to transform decoder's output
        self.full_att = nn.Linear(attention_dim, 1)  # linear layer to calculate values to be softmax-ed
        self.relu = nn.ReLU()
        self.softmax = nn.Softmax(dim=1)  # softmax layer to calculate weights

    def forward(self, encoder_out, decoder_hidden):
        att1 = self.encoder_att(encoder_out)  # (batch_size, num_pixels, attention_dim)
        att2 = self.decoder_att(decoder_hidden)  # (batch_size, attention_dim)
        att = self.full_att(self.relu(att1 + att2.unsqueeze(1))).squeeze(2)  # (batch_size, num_pixels)
        alpha = self.softmax(att)  # (batch_size, num_pixels)
        attention_weighted_encoding = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)  # (batch_size, encoder_dim)

        return attention_weighted_encoding, alpha


class DecoderWithAttention(nn.Module):
    """
    Decoder.
    """

    def __init__(self, attention_dim, embed_dim, decoder_dim, vocab_size, encoder_dim=2048, dropout=0.5):
        super(DecoderWithAttention, self).__init__()

        self.encoder_dim = encoder_dim
        self.attention_dim = attention_dim
        self.embed_dim = embed_dim
        self.decoder_dim = decoder_dim
        self.vocab_size = vocab_size
        self.dropout = dropout

        self.attention = Attention(encoder_dim, decoder_dim, attention_dim)  # attention network

        self.embedding = nn.Embedding(vocab_size, embed_dim)  # embedding layer
        self.dropout = nn.Dropout(p=self.dropout)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim, bias=True)  # decoding LSTMCell
        self.init_h = nn.Linear(encoder_dim, decoder_dim)  # linear layer to find initial hidden state of LSTMCell
        self.init_c = nn.Linear(encoder_dim, decoder_dim)  # linear layer to find initial cell state of LSTMCell
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)  # linear layer to create a sigmoid-activated gate
        self.sigmoid = nn.Sigmoid()
        self.fc = nn.Linear(decoder_dim, vocab_size)  # linear layer to find scores over vocabulary
        self.init_weights()  # initialize some layers with the uniform distribution

    def init_weights(self):
        self.embedding.weight.data.uniform_(-0.1, 0.1)
        self.fc.bias.data.fill_(0)
        self.fc.weight.data.uniform_(-0.1, 0.1)

    def init_hidden_state(self, encoder_out):
        mean_encoder_out = encoder_out.mean(dim=1)
        h = self.init_h(mean_encoder_out)  # (batch_size, decoder_dim)
        c = self.init_c(mean_encoder_out)
        return h, c

    def forward(self, encoder_out, encoded_captions, caption_lengths):
        batch_size = encoder_out.size(0)
        encoder_dim = encoder_out.size(-1)
        vocab_size = self.vocab_size

        # Flatten image
        encoder_out = encoder_out.view(batch_size, -1, encoder_dim)  # (batch_size, num_pixels, encoder_dim)
        num_pixels = encoder_out.size(1)

        # Sort input data by decreasing lengths; why? apparent below
        caption_lengths, sort_ind = caption_lengths.squeeze(1).sort(dim=0, descending=True)
        encoder_out = encoder_out[sort_ind]
        encoded_captions = encoded_captions[sort_ind]

        # Embedding
        embeddings = self.embedding(encoded_captions)  # (batch_size, max_caption_length, embed_dim)

        # Initialize LSTM state
        h, c = self.init_hidden_state(encoder_out)  # (batch_size, decoder_dim)

        # We won't decode at the <end> position, since we've finished generating as soon as we generate <end>
        # So, decoding lengths are actual lengths - 1
        decode_lengths = (caption_lengths - 1).tolist()

        # Create tensors to hold word predicion scores and alphas
        predictions = torch.zeros(batch_size, max(decode_lengths), vocab_size).to(device)
        alphas = torch.zeros(batch_size, max(decode_lengths), num_pixels).to(device)

        for t in range(max(decode_lengths)):
            batch_size_t = sum([l > t for l in decode_lengths])
            attention_weighted_encoding, alpha = self.attention(encoder_out[:batch_size_t],
                                                                h[:batch_size_t])
            gate = self.sigmoid(self.f_beta(h[:batch_size_t]))  # gating scalar, (batch_size_t, encoder_dim)
            attention_weighted_encoding = gate * attention_weighted_encoding
            h, c = self.decode_step(
                torch.cat([embeddings[:batch_size_t, t, :], attention_weighted_encoding], dim=1),
                (h[:batch_size_t], c[:batch_size_t]))  # (batch_size_t, decoder_dim)
            preds = self.fc(self.dropout(h))  # (batch_size_t, vocab_size)
            predictions[:batch_size_t, t, :] = preds
            alphas[:batch_size_t, t, :] = alpha

        return predictions, encoded_captions, decode_lengths, alphas, sort_ind


for _cls in (Encoder, Attention, DecoderWithAttention):
    _cls.__module__ = "models"  # changed: defined here; train.py pickles them as models.Encoder etc.


# --- utils.py ------------------------------------------------------------------------
def save_checkpoint(data_name, epoch, epochs_since_improvement, encoder, decoder, encoder_optimizer, decoder_optimizer,
                    bleu4, is_best):
    state = {'epoch': epoch,
             'epochs_since_improvement': epochs_since_improvement,
             'bleu-4': bleu4,
             'encoder': encoder,
             'decoder': decoder,
             'encoder_optimizer': encoder_optimizer,
             'decoder_optimizer': decoder_optimizer}
    filename = 'checkpoint_' + data_name + '.pth.tar'
    torch.save(state, filename)
    # If this checkpoint is the best so far, store a copy so it doesn't get overwritten by a worse checkpoint
    if is_best:
        torch.save(state, 'BEST_' + filename)


def create_word_map(captions, min_word_freq):  # changed: the word-map lines of create_input_files
    word_freq = Counter()
    for c in captions:
        word_freq.update(c.lower().split())  # changed: the fixture's captions, split (Karpathy's JSON has tokens)
    words = [w for w in word_freq.keys() if word_freq[w] > min_word_freq]
    word_map = {k: v + 1 for v, k in enumerate(words)}
    word_map['<unk>'] = len(word_map) + 1
    word_map['<start>'] = len(word_map) + 1
    word_map['<end>'] = len(word_map) + 1
    word_map['<pad>'] = 0
    return word_map


# --- caption.py ----------------------------------------------------------------------
def imread(path):  # changed: scipy.misc.imread (removed from SciPy) was this PIL call
    return np.array(Image.open(path))


def imresize(img, size):  # changed: scipy.misc.imresize (removed) was this PIL call (interp='bilinear')
    return np.array(Image.fromarray(img).resize((size[1], size[0]), resample=Image.BILINEAR))


def read_image(image_path):  # the first lines of caption_image_beam_search: (1, 3, 256, 256)
    img = imread(image_path)
    if len(img.shape) == 2:
        img = img[:, :, np.newaxis]
        img = np.concatenate([img, img, img], axis=2)
    img = imresize(img, (256, 256))
    img = img.transpose(2, 0, 1)
    img = img / 255.
    img = torch.FloatTensor(img).to(device)
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406],
                                     std=[0.229, 0.224, 0.225])
    transform = transforms.Compose([normalize])
    image = transform(img)  # (3, 256, 256)
    return image.unsqueeze(0)  # (1, 3, 256, 256)


def caption_image_beam_search(encoder, decoder, image_path, word_map, beam_size=3):
    k = beam_size
    vocab_size = len(word_map)

    # Read image and process
    image = read_image(image_path)

    # Encode
    encoder_out = encoder(image)  # (1, enc_image_size, enc_image_size, encoder_dim)
    enc_image_size = encoder_out.size(1)
    encoder_dim = encoder_out.size(3)

    # Flatten encoding
    encoder_out = encoder_out.view(1, -1, encoder_dim)  # (1, num_pixels, encoder_dim)
    num_pixels = encoder_out.size(1)

    # We'll treat the problem as having a batch size of k
    encoder_out = encoder_out.expand(k, num_pixels, encoder_dim)  # (k, num_pixels, encoder_dim)

    # Tensor to store top k previous words at each step; now they're just <start>
    k_prev_words = torch.LongTensor([[word_map['<start>']]] * k).to(device)  # (k, 1)

    # Tensor to store top k sequences; now they're just <start>
    seqs = k_prev_words  # (k, 1)

    # Tensor to store top k sequences' scores; now they're just 0
    top_k_scores = torch.zeros(k, 1).to(device)  # (k, 1)

    # Tensor to store top k sequences' alphas; now they're just 1s
    seqs_alpha = torch.ones(k, 1, enc_image_size, enc_image_size).to(device)  # (k, 1, enc_image_size, enc_image_size)

    # Lists to store completed sequences, their alphas and scores
    complete_seqs = list()
    complete_seqs_alpha = list()
    complete_seqs_scores = list()

    # Start decoding
    step = 1
    h, c = decoder.init_hidden_state(encoder_out)

    # s is a number less than or equal to k, because sequences are removed from this process once they hit <end>
    while True:

        embeddings = decoder.embedding(k_prev_words).squeeze(1)  # (s, embed_dim)

        awe, alpha = decoder.attention(encoder_out, h)  # (s, encoder_dim), (s, num_pixels)

        alpha = alpha.view(-1, enc_image_size, enc_image_size)  # (s, enc_image_size, enc_image_size)

        gate = decoder.sigmoid(decoder.f_beta(h))  # gating scalar, (s, encoder_dim)
        awe = gate * awe

        h, c = decoder.decode_step(torch.cat([embeddings, awe], dim=1), (h, c))  # (s, decoder_dim)

        scores = decoder.fc(h)  # (s, vocab_size)
        scores = F.log_softmax(scores, dim=1)

        # Add
        scores = top_k_scores.expand_as(scores) + scores  # (s, vocab_size)

        # For the first step, all k points will have the same scores (since same k previous words, h, c)
        if step == 1:
            top_k_scores, top_k_words = scores[0].topk(k, 0, True, True)  # (s)
        else:
            # Unroll and find top scores, and their unrolled indices
            top_k_scores, top_k_words = scores.view(-1).topk(k, 0, True, True)  # (s)

        # Convert unrolled indices to actual indices of scores
        prev_word_inds = top_k_words // vocab_size  # (s)  # changed: `/` was integer division in torch 0.4
        next_word_inds = top_k_words % vocab_size  # (s)

        # Add new words to sequences, alphas
        seqs = torch.cat([seqs[prev_word_inds], next_word_inds.unsqueeze(1)], dim=1)  # (s, step+1)
        seqs_alpha = torch.cat([seqs_alpha[prev_word_inds], alpha[prev_word_inds].unsqueeze(1)],
                               dim=1)  # (s, step+1, enc_image_size, enc_image_size)

        # Which sequences are incomplete (didn't reach <end>)?
        incomplete_inds = [ind for ind, next_word in enumerate(next_word_inds) if
                           next_word != word_map['<end>']]
        complete_inds = list(set(range(len(next_word_inds))) - set(incomplete_inds))

        # Set aside complete sequences
        if len(complete_inds) > 0:
            complete_seqs.extend(seqs[complete_inds].tolist())
            complete_seqs_alpha.extend(seqs_alpha[complete_inds].tolist())
            complete_seqs_scores.extend(top_k_scores[complete_inds])
        k -= len(complete_inds)  # reduce beam length accordingly

        # Proceed with incomplete sequences
        if k == 0:
            break
        seqs = seqs[incomplete_inds]
        seqs_alpha = seqs_alpha[incomplete_inds]
        h = h[prev_word_inds[incomplete_inds]]
        c = c[prev_word_inds[incomplete_inds]]
        encoder_out = encoder_out[prev_word_inds[incomplete_inds]]
        top_k_scores = top_k_scores[incomplete_inds].unsqueeze(1)
        k_prev_words = next_word_inds[incomplete_inds].unsqueeze(1)

        # Break if things have been going on too long
        if step > 50:
            break
        step += 1

    i = complete_seqs_scores.index(max(complete_seqs_scores))
    seq = complete_seqs[i]
    alphas = complete_seqs_alpha[i]

    return seq, alphas, float(complete_seqs_scores[i])  # changed: its score too, for the comparison


# =====================================================================================
# The checkpoints, saved as each project saves them
# =====================================================================================

def fixture_captions() -> dict[str, list[str]]:
    """Image file name → its captions in the tiny fixture set."""
    import csv

    captions: dict[str, list[str]] = {}
    with open(CAPTIONS) as f:
        for row in csv.DictReader(f):
            captions.setdefault(Path(row["image"]).name, []).append(row["caption"])
    return captions


def trained_batchnorm(encoder: nn.Module, images: torch.Tensor) -> None:
    """BatchNorm as training leaves it: weights away from 1 / 0, running statistics those of the
    data (one forward pass in train mode), so the random network's features are well scaled and
    differ from image to image — and an import that dropped or misplaced them would show."""
    generator = torch.Generator().manual_seed(1)
    layers = [layer for layer in encoder.modules() if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for layer in layers:
        layer.weight.data = 0.5 + torch.rand(layer.num_features, generator=generator)
        layer.bias.data = 0.1 * torch.randn(layer.num_features, generator=generator)
        layer.momentum = None  # running statistics = this batch's
    with torch.no_grad():
        encoder.train()(images)
    encoder.eval()


def padded(sequences: list[list[int]]) -> torch.Tensor:
    return torch.tensor([seq + [0] * (max(map(len, sequences)) - len(seq)) for seq in sequences])


@pytest.fixture(scope="module")
def seed_model(tmp_path_factory):
    """train.py's encoder/decoder state dicts and build_vocab.py's vocab.pkl. The decoder is
    trained by train.py's loss on the fixture images' first captions, for a few steps on the
    encoder's (random, fixed) features, so it predicts <start> from the image and ends its
    captions, as a trained model does."""
    folder = tmp_path_factory.mktemp("seed")
    torch.manual_seed(0)
    captions = fixture_captions()
    vocab = build_vocab([c for image_captions in captions.values() for c in image_captions], threshold=1)
    encoder = EncoderCNN(256)
    decoder = DecoderRNN(256, 512, len(vocab), 1)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406),
                                                                                (0.229, 0.224, 0.225))])
    images = torch.cat([load_image(image, transform) for image in IMAGES])
    trained_batchnorm(encoder, images)
    with torch.no_grad():
        features = encoder(images)
    # train.py's step: <start> w1 .. <end>, longest first (its collate_fn sorts), packed targets.
    targets = [[vocab('<start>')] + [vocab(w) for w in captions[image.name][0].split()] + [vocab('<end>')]
               for image in IMAGES]
    order = sorted(range(len(IMAGES)), key=lambda i: -len(targets[i]))
    batch, lengths = padded([targets[i] for i in order]), [len(targets[i]) for i in order]
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.001)
    for _ in range(80):
        outputs = decoder(features[order], batch, lengths)
        loss = criterion(outputs, pack_padded_sequence(batch, lengths, batch_first=True)[0])
        decoder.zero_grad()
        loss.backward()
        optimizer.step()
    files = {"encoder": folder / "encoder-5-3000.pkl", "decoder": folder / "decoder-5-3000.pkl",
             "vocab": folder / "vocab.pkl"}
    torch.save(decoder.state_dict(), files["decoder"])
    torch.save(encoder.state_dict(), files["encoder"])
    with pytest.MonkeyPatch.context() as patch:  # pickle finds the class where build_vocab.py had it
        patch.setattr(sys.modules["__main__"], "Vocabulary", Vocabulary, raising=False)
        with open(files["vocab"], 'wb') as f:
            pickle.dump(vocab, f)
    return types.SimpleNamespace(encoder=encoder, decoder=decoder.eval(), vocab=vocab, files=files)


def teacher_forced_scores(decoder, encoder_out, projected, captions):
    """DecoderWithAttention.forward's scores for captions of equal length, its attention's image
    projection (``encoder_att``) given once rather than recomputed at every step."""
    h, c = decoder.init_hidden_state(encoder_out)
    attention, scores = decoder.attention, []
    for t in range(captions.size(1) - 1):
        att = attention.full_att(attention.relu(projected + attention.decoder_att(h).unsqueeze(1))).squeeze(2)
        alpha = attention.softmax(att)
        awe = decoder.sigmoid(decoder.f_beta(h)) * (encoder_out * alpha.unsqueeze(2)).sum(dim=1)
        h, c = decoder.decode_step(torch.cat([decoder.embedding(captions[:, t]), awe], dim=1), (h, c))
        scores.append(decoder.fc(decoder.dropout(h)))
    return torch.stack(scores, 1)  # (batch, length - 1, vocab)


@pytest.fixture(scope="module")
def sat_model(tmp_path_factory):
    """save_checkpoint's BEST_checkpoint_*.pth.tar (whole modules and the decoder's optimizer)
    and the word map. The decoder is trained a few steps on the fixture images' first captions
    (its attention's image projection left random, so each step is cheap): its beams then end
    at different steps and its captions differ from image to image, as a trained model's do."""
    folder = tmp_path_factory.mktemp("sat")
    torch.manual_seed(0)
    captions = fixture_captions()
    word_map = create_word_map([c for image_captions in captions.values() for c in image_captions], min_word_freq=0)
    encoder = Encoder()
    decoder = DecoderWithAttention(attention_dim=64, embed_dim=256, decoder_dim=256, vocab_size=len(word_map),
                                   dropout=0.1)
    trained_batchnorm(encoder, torch.cat([read_image(image) for image in IMAGES]))
    with torch.no_grad():
        encoder_out = torch.cat([encoder(read_image(image)) for image in IMAGES]).flatten(1, 2)  # (4, 196, 2048)
        projected = decoder.attention.encoder_att(encoder_out)
    targets = padded([[word_map['<start>']] + [word_map[w] for w in captions[image.name][0].split()]
                      + [word_map['<end>']] for image in IMAGES])
    decoder_optimizer = torch.optim.Adam(params=filter(lambda p: p.requires_grad, decoder.parameters()), lr=4e-3)
    for _ in range(40):
        scores = teacher_forced_scores(decoder, encoder_out, projected, targets)
        loss = F.cross_entropy(scores.transpose(1, 2), targets[:, 1:], ignore_index=word_map['<pad>'])
        decoder_optimizer.zero_grad()
        loss.backward()
        decoder_optimizer.step()
    decoder.eval()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setitem(sys.modules, "models", types.SimpleNamespace(
            Encoder=Encoder, Attention=Attention, DecoderWithAttention=DecoderWithAttention))
        save_checkpoint("coco_5_cap_per_img_5_min_word_freq", 12, 0, encoder, decoder, None, decoder_optimizer,
                        0.2432, is_best=True)
        # The same, as torch < 1.6 saved it (the tutorial's era): the legacy format, module sources inside.
        torch.save(torch.load(folder / "BEST_checkpoint_coco_5_cap_per_img_5_min_word_freq.pth.tar",
                              weights_only=False), folder / "legacy.pth.tar", _use_new_zipfile_serialization=False)
    word_map_file = folder / "WORDMAP_coco_5_cap_per_img_5_min_word_freq.json"
    word_map_file.write_text(json.dumps(word_map))
    checkpoint = folder / "BEST_checkpoint_coco_5_cap_per_img_5_min_word_freq.pth.tar"
    return types.SimpleNamespace(encoder=encoder, decoder=decoder, word_map=word_map, encoder_out=encoder_out,
                                 files={"checkpoint": checkpoint, "word_map": word_map_file})


@pytest.fixture(scope="module")
def sat_imported(sat_model, tmp_path_factory):
    """The tutorial's checkpoint imported, reloaded from its folder, torch encoder."""
    out = import_show_attend_tell(**sat_model.files, out=tmp_path_factory.mktemp("sat-import") / "model")
    return out, Captioner.from_pretrained(out).use_runtime("torch")


def hypotheses(model: Captioner, images, beam_size: int, **decoding):
    """captioner's best hypothesis per image, all images in one batch, the torch encoder."""
    transform = build_transform(model.preprocess)
    pixels = torch.stack([transform(image) for image in images])
    with torch.inference_mode():
        return [h[0] for h in model.generate(model.encode(pixels), beam_size=beam_size, **decoding)]


def sample_log_probs(encoder, decoder, vocab, image, words):
    """The log-probability of each of ``sample()``'s choices ``words``: its LSTM over the image
    feature, then over each word it fed back."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406),
                                                                                (0.229, 0.224, 0.225))])
    feature = encoder(load_image(image, transform))
    ids = torch.tensor([[vocab.word2idx[w] for w in words]])
    inputs = torch.cat([feature.unsqueeze(1), decoder.embed(ids[:, :-1])], 1)
    return F.log_softmax(decoder.linear(decoder.lstm(inputs)[0]), -1)[0].gather(1, ids.T)[:, 0].tolist()


def check_as_sample_py(model: Captioner, seed, images) -> list[list[str]]:
    """captioner's greedy captions of ``images`` are ``sample.py``'s, word for word, with its
    per-step log-probabilities; returns sample()'s words per image."""
    sampled = []
    with torch.no_grad():
        for image in images:
            ours = hypotheses(model, [image], beam_size=1)[0]  # as sample.py: one image
            sentence = sample_main(image, seed.encoder, seed.decoder, seed.vocab)[0]
            words = sentence.split(" ")  # up to <end>, if it came within 20 steps
            caption_words = words[:-1] if words[-1] == "<end>" else words
            assert [model.vocab.itos[t] for t in ours.tokens] == caption_words, image.name
            expected = sample_log_probs(seed.encoder, seed.decoder, seed.vocab, image, words)
            assert np.allclose(ours.token_log_probs, expected, rtol=0, atol=1e-5), image.name
            # The text leaves the markers out, as the seed's article strips <start> and <end>.
            assert model.vocab.decode(ours.tokens) == " ".join(w for w in caption_words if w not in ("<start>", "<pad>"))
            sampled.append(words)
    return sampled


PHOTOS = sorted((TINY / "images").glob("*.jpg")) + sorted((Path(__file__).parent.parent / "examples").glob("*.jpg"))


def test_pillow_resize_gives_each_scripts_pixels_bit_for_bit():
    """The imported models' preprocessing, torch transform and torch-free runtime alike, is
    sample.py's (LANCZOS 224, ToTensor) and caption.py's (imresize 256, /255.) to the last bit."""
    from captioner.importers import seed, show_attend_tell
    from captioner.data.images import preprocess_array as preprocess

    seed_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406),
                                                                                     (0.229, 0.224, 0.225))])
    for config, theirs in ((seed.PREPROCESS, lambda photo: load_image(photo, seed_transform)),
                           (show_attend_tell.PREPROCESS, read_image)):
        transform = build_transform(config)
        for photo in PHOTOS:
            expected = theirs(photo)[0]
            assert torch.equal(transform(photo), expected), photo.name
            assert np.array_equal(preprocess(photo, config), expected.numpy()), photo.name


@pytest.mark.parametrize("side", [7, 8, 9, 16])
def test_the_grid_pool_is_adaptive_average_pooling(side):
    from captioner.encoders.resnet import adaptive_average_pool

    feature_map = torch.randn(2, 5, side, side + 3, generator=torch.Generator().manual_seed(side))
    assert torch.allclose(adaptive_average_pool(feature_map, 14), F.adaptive_avg_pool2d(feature_map, 14), atol=1e-6)


def test_seed_import_captions_as_sample_py(seed_model, tmp_path):
    out = import_seed(**seed_model.files, out=tmp_path / "seed")
    assert sorted(p.name for p in out.iterdir()) == ["IMPORTED.md", "config.json", "model.safetensors", "vocab.json"]
    model = Captioner.from_pretrained(out).use_runtime("torch")
    config = json.loads((out / "config.json").read_text())
    assert config["encoder"]["name"] == "resnet152" and config["encoder_weights_saved"]
    assert config["decoder"]["options"]["first_token_from_image"] is True and config["max_length"] == 20
    assert config["decoding"] == {"banned_tokens": [], "min_length": 0, "retire_finished": False}
    assert config["preprocess"]["pillow_resize"] and config["preprocess"]["interpolation"] == "lanczos"
    assert model.vocab.itos == [seed_model.vocab.idx2word[i] for i in range(len(seed_model.vocab))]

    sampled = check_as_sample_py(model, seed_model, IMAGES)
    assert all(words[0] == "<start>" and words[-1] == "<end>" for words in sampled)  # trained: it ends
    # One batch runs other convolution kernels: the last bits of the scores differ, never the words.
    for words, caption in zip(sampled, model.caption(IMAGES, beam_size=1)):
        assert caption.words == words[:-1]


@pytest.fixture(scope="module")
def untrained_seed(tmp_path_factory):
    """The seed's model untrained, as a user who swapped ResNet-152 for ResNet-50 saves it."""
    folder = tmp_path_factory.mktemp("seed-r50")
    torch.manual_seed(1)
    vocab = build_vocab([c for image_captions in fixture_captions().values() for c in image_captions], threshold=1)
    encoder = EncoderCNN(256)
    resnet = models.resnet50(weights=None)  # changed: the ResNet-50 variant of EncoderCNN.__init__
    encoder.resnet, encoder.linear = nn.Sequential(*list(resnet.children())[:-1]), nn.Linear(2048, 256)
    decoder = DecoderRNN(256, 512, len(vocab), 1).eval()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406),
                                                                                (0.229, 0.224, 0.225))])
    trained_batchnorm(encoder, torch.cat([load_image(image, transform) for image in IMAGES]))
    files = {"encoder": folder / "encoder-1-10.ckpt", "decoder": folder / "decoder-1-10.ckpt",
             "vocab": folder / "vocab.pkl"}
    torch.save(decoder.state_dict(), files["decoder"])
    torch.save(encoder.state_dict(), files["encoder"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys.modules["__main__"], "Vocabulary", Vocabulary, raising=False)
        with open(files["vocab"], 'wb') as f:
            pickle.dump(vocab, f)
    return types.SimpleNamespace(encoder=encoder, decoder=decoder, vocab=vocab, files=files)


def test_an_untrained_seed_model_captions_as_sample_py_too(untrained_seed, tmp_path):
    """Random weights: sample() feeds back whatever the image step predicts (not <start>) and
    may emit <pad> or <start> mid-caption; the imported model does the same."""
    model = Captioner.from_pretrained(import_seed(**untrained_seed.files, out=tmp_path / "m")).use_runtime("torch")
    assert model.encoder.name == "resnet50"
    sampled = check_as_sample_py(model, untrained_seed, IMAGES[:2])
    assert any(words[0] != "<start>" for words in sampled)


def test_cli_import_seed_then_caption(untrained_seed, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["import", "seed", *(f"--{k}={v}" for k, v in untrained_seed.files.items()), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert main(["caption", str(IMAGES[0]), "--model", str(out), "--beam-size", "1", "--runtime", "torch",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        words = sample_main(IMAGES[0], untrained_seed.encoder, untrained_seed.decoder, untrained_seed.vocab)[0].split()
    assert record["caption"] == " ".join(w for w in words if w not in ("<start>", "<end>", "<pad>"))
    # An import never writes over a folder that holds files.
    assert main(["import", "seed", *(f"--{k}={v}" for k, v in untrained_seed.files.items()), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def tutorial_log_probs(decoder, encoder_out, seq):
    """The log-probability of each word of ``seq`` (from ``<start>``) under the tutorial's
    decoder, stepping as its beam search does with one beam; ``encoder_out`` (1, pixels, 2048)."""
    h, c = decoder.init_hidden_state(encoder_out)
    log_probs = []
    for previous, word in zip(seq[:-1], seq[1:]):
        embeddings = decoder.embedding(torch.LongTensor([previous]))
        awe, _ = decoder.attention(encoder_out, h)
        awe = decoder.sigmoid(decoder.f_beta(h)) * awe
        h, c = decoder.decode_step(torch.cat([embeddings, awe], dim=1), (h, c))
        log_probs.append(F.log_softmax(decoder.fc(h), dim=1)[0, word].item())
    return log_probs


def test_show_attend_tell_import_captions_as_caption_py(sat_model, sat_imported):
    out, model = sat_imported
    config = json.loads((out / "config.json").read_text())
    assert config["encoder"]["name"] == "resnet101" and config["encoder"]["options"]["grid_size"] == 14
    assert config["decoder"]["options"]["attention_activation"] == "relu" and config["max_length"] == 51
    assert config["decoding"] == {"banned_tokens": [], "min_length": 0, "retire_finished": True}
    id_to_word = {i: w for w, i in sat_model.word_map.items()}
    # Rows reordered: the word map has <pad> 0 and <unk> <start> <end> last; captioner 0..3 first.
    assert model.vocab.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert sorted(model.vocab.itos) == sorted(sat_model.word_map)

    captions = set()
    with torch.no_grad():
        for beam_size, images in ((3, IMAGES), (5, IMAGES[:2])):
            for image in images:
                seq, _, score = caption_image_beam_search(sat_model.encoder, sat_model.decoder, image,
                                                          sat_model.word_map, beam_size)
                ours = hypotheses(model, [image], beam_size)[0]  # as caption.py: one image
                assert seq[0] == sat_model.word_map["<start>"] and seq[-1] == sat_model.word_map["<end>"]
                words = [id_to_word[i] for i in seq[1:-1]]
                assert [model.vocab.itos[t] for t in ours.tokens] == words, (image.name, beam_size)
                assert ours.log_prob == pytest.approx(score, abs=1e-5)
                encoder_out = sat_model.encoder_out[IMAGES.index(image)][None]
                expected = tutorial_log_probs(sat_model.decoder, encoder_out, seq)
                assert np.allclose(ours.token_log_probs, expected, rtol=0, atol=1e-5), (image.name, beam_size)
                captions.add(" ".join(words))
    assert len(captions) > 1  # the images give different captions


def test_cli_imports_a_legacy_format_checkpoint_the_same(sat_model, sat_imported, tmp_path, capsys):
    """torch < 1.6 wrote the legacy format, with each pickled module's source: same model."""
    from safetensors.torch import load_file

    out = tmp_path / "legacy"
    assert main(["import", "show-attend-tell", "--checkpoint", str(sat_model.files["checkpoint"].with_name("legacy.pth.tar")),
                 "--word-map", str(sat_model.files["word_map"]), "--out", str(out)]) == 0
    assert "--beam-size 5" in capsys.readouterr().out
    ours, zipped = load_file(out / "model.safetensors"), load_file(sat_imported[0] / "model.safetensors")
    assert ours.keys() == zipped.keys() and all(torch.equal(ours[k], zipped[k]) for k in ours)
    assert (out / "config.json").read_text() == (sat_imported[0] / "config.json").read_text()


@pytest.mark.parametrize("end_bias, images", [(-100.0, 1), (-0.25, 2), (1.0, 4)])  # long searches cost more
def test_show_attend_tell_beams_that_end_early_late_or_never(sat_model, sat_imported, end_bias, images):
    """The <end> logit shifted in both models. -100: no beam ever ends; caption.py fails after
    its 51 steps (max() of no finished scores) and captioner returns the best live beam. -0.25:
    some beams end, others run to the step limit, where only finished captions count. +1: beams
    end early; a finished beam's slot is not taken by the live ones (captioner's own search would
    answer "a" where the tutorial says "a tabby" here)."""
    _, model = sat_imported
    oracle = copy.deepcopy(sat_model.decoder)
    oracle.fc.bias.data[sat_model.word_map["<end>"]] += end_bias
    decoder = copy.deepcopy(model.decoder)
    decoder.head.bias.data[model.vocab.end_id] += end_bias
    id_to_word = {i: w for w, i in sat_model.word_map.items()}
    steps = []
    oracle.decode_step.register_forward_hook(lambda *_: steps.append(1))
    transform = build_transform(model.preprocess)
    with torch.no_grad():
        for image, encoder_out in zip(IMAGES[:images], sat_model.encoder_out):
            features = model.encode(transform(image)[None])

            def encoder(pixels, encoder_out=encoder_out):  # the image's encoding, computed once
                return encoder_out.view(1, 14, 14, 2048)

            for beam_size in (3, 5):
                ours = beam_search(decoder, features, model.decoding_config(), beam_size=beam_size)[0][0]
                steps.clear()
                try:
                    seq, _, score = caption_image_beam_search(encoder, oracle, image, sat_model.word_map, beam_size)
                except ValueError as failure:  # no beam ended within its step limit
                    assert "max()" in str(failure) and end_bias < 0
                    assert len(steps) == 51 and len(ours.tokens) == 51
                    continue
                assert end_bias > -50
                assert [model.vocab.itos[t] for t in ours.tokens] == [id_to_word[i] for i in seq[1:-1]]
                assert ours.log_prob == pytest.approx(score, abs=1e-5)


def test_imported_models_export_and_caption_the_same(untrained_seed, sat_imported, tmp_path):
    """``captioner export`` takes the imported options (the seed's first step, the tutorial's
    pooled grid, ReLU attention and retiring beams); the exported model captions as the torch
    one, and so does the torch decoder over the ONNX Runtime encoder (``--runtime onnx``)."""
    pytest.importorskip("onnxruntime")
    from captioner.exported import OnnxCaptioner

    seed_out = import_seed(**untrained_seed.files, out=tmp_path / "seed")
    for source, beam_size, runtime in ((seed_out, 1, "onnx"), (sat_imported[0], 3, "torch")):
        model = Captioner.from_pretrained(source).use_runtime(runtime)
        exported = tmp_path / f"exported-{source.name}"
        assert main(["export", "--model", str(source), "--out", str(exported)]) == 0
        onnx = OnnxCaptioner(exported).caption(IMAGES[:2], beam_size=beam_size)
        for ours, theirs in zip(model.caption(IMAGES[:2], beam_size=beam_size), onnx):
            assert ours.text == theirs.text and ours.score == pytest.approx(theirs.score, abs=1e-3)


class Payload:
    """What an attacker pickles: unpickling it calls ``run(*arguments)``."""

    def __init__(self, run, *arguments):
        self.run, self.arguments = run, arguments

    def __reduce__(self):
        return self.run, self.arguments


def tiny_state_dict(path: Path) -> Path:
    torch.save({"resnet.0.weight": torch.zeros(1)}, path)
    return path


def test_a_smuggled_os_system_in_vocab_pkl_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    vocab = Vocabulary()
    vocab.add_word('<pad>')
    vocab.idx2word[1] = Payload(os.system, f"touch {marker}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys.modules["__main__"], "Vocabulary", Vocabulary, raising=False)
        with open(tmp_path / "vocab.pkl", "wb") as f:
            pickle.dump(vocab, f)
        with open(tmp_path / "vocab.pkl", "rb") as f:  # the payload is live: pickle.load runs it
            pickle.load(f)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointImportError, match=r"vocab\.pkl: refused to load posix\.system from the pickle"):
        import_seed(encoder=tiny_state_dict(tmp_path / "e.pkl"), decoder=tiny_state_dict(tmp_path / "d.pkl"),
                    vocab=tmp_path / "vocab.pkl", out=tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def run_path_payload(marker: Path) -> Payload:
    script = marker.with_suffix(".py")
    script.write_text(f"open({str(marker)!r}, 'w')")
    return Payload(runpy.run_path, str(script))


SMUGGLED = {
    "posix.system": lambda marker: Payload(os.system, f"touch {marker}"),
    "builtins.exec": lambda marker: Payload(exec, f"open({str(marker)!r}, 'w')"),
    "runpy.run_path": run_path_payload,
    "torch.nn.modules.linear.Bilinear": lambda marker: nn.Bilinear(2, 2, 2),  # a layer the tutorial never pickles
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", SMUGGLED)
def test_a_checkpoint_with_anything_outside_the_list_is_refused(tmp_path, name, legacy):
    marker = tmp_path / "pwned"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "models", types.SimpleNamespace(Attention=Attention))
        torch.save({"epoch": 3, "encoder": None, "decoder": Attention(4, 4, 4), "extra": SMUGGLED[name](marker)},
                   tmp_path / "BEST_checkpoint.pth.tar", _use_new_zipfile_serialization=not legacy)
    (tmp_path / "WORDMAP.json").write_text(json.dumps({"<pad>": 0}))
    with pytest.raises(CheckpointImportError) as refused:
        import_show_attend_tell(checkpoint=tmp_path / "BEST_checkpoint.pth.tar", word_map=tmp_path / "WORDMAP.json",
                                out=tmp_path / "out")
    message = str(refused.value)
    assert f"refused to load {name} from the pickle" in message and "\n" not in message
    assert not marker.exists()


def test_a_state_dict_that_smuggles_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"resnet.0.weight": torch.zeros(1), "linear.weight": Payload(os.system, f"touch {marker}")},
               tmp_path / "encoder-5-3000.pkl")
    with pytest.raises(CheckpointImportError, match="encoder-5-3000.pkl: refused to load posix.system"):
        import_seed(encoder=tmp_path / "encoder-5-3000.pkl", decoder=tiny_state_dict(tmp_path / "d.pkl"),
                    vocab=tmp_path / "vocab.pkl", out=tmp_path / "out")
    assert not marker.exists()


def test_cli_refuses_in_one_line_without_running_the_payload(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"decoder": Payload(os.system, f"touch {marker}")}, tmp_path / "BEST.pth.tar")
    (tmp_path / "WORDMAP.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "captioner", "import", "show-attend-tell", "--checkpoint", str(tmp_path / "BEST.pth.tar"),
         "--word-map", str(tmp_path / "WORDMAP.json"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"captioner import: error: {tmp_path / 'BEST.pth.tar'}: refused to load posix.system from the pickle "
        f"(only {ALLOWED} are allowed); nothing in the file ran"]
    assert not marker.exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("garbage", "not a readable Show, Attend and Tell checkpoint"),
    ("state dict", "no pickled 'encoder' and 'decoder'; found fc.weight"),
    ("word map gaps", "the ids are not 0 .. 2, each once"),
])
def test_files_that_are_not_what_they_claim_get_one_line(tmp_path, case, message):
    checkpoint, word_map = tmp_path / "BEST.pth.tar", tmp_path / "WORDMAP.json"
    word_map.write_text(json.dumps({"<pad>": 0, "<start>": 1, "<end>": 2}))
    if case == "garbage":
        checkpoint.write_bytes(os.urandom(4096))
    elif case == "state dict":
        torch.save({"fc.weight": torch.zeros(2, 2)}, checkpoint)
    elif case == "word map gaps":
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(sys.modules, "models", types.SimpleNamespace(
                Encoder=Encoder, Attention=Attention, DecoderWithAttention=DecoderWithAttention))
            torch.save({"encoder": nn.Module.__new__(Encoder), "decoder": nn.Module.__new__(DecoderWithAttention)},
                       checkpoint)
        word_map.write_text(json.dumps({"<pad>": 0, "<start>": 1, "<end>": 3}))
    with pytest.raises(CheckpointImportError, match=message):
        import_show_attend_tell(checkpoint=checkpoint, word_map=word_map, out=tmp_path / "out")
