"""Write the bundled general chat replay set, src/tunesmith/samples/general_chat.jsonl.

Single-turn conversations of a general assistant, in OpenAI's chat format, that SFT mixes
into a task's training rows (`--replay-ratio`) so that the model keeps answering plain
questions. Every row was written for this project (no source, no model): short factual
questions, arithmetic and unit conversions (computed here, so they are right), definitions,
translations of common words, rewriting and summarising a given sentence, simple how-to,
polite refusals of harmful requests, short creative writing, simple code questions and
everyday conversation. Answers are short, as a good small assistant's are.

None of the questions is, or paraphrases, one of the forgetting probes
(`general_probes.jsonl`), and no answer gives a probe's answer away (no weeks-to-days or
hours-to-minutes conversions, for example): the check that measures forgetting stays
uncontaminated (tests/test_replay_chat.py checks it). Seeded: running it again writes the same file.

    .venv/bin/python scripts/make_chat_replay.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "samples" / "general_chat.jsonl"
SEED = 26

# --------------------------------------------------------------------------- capitals

CAPITALS = [
    ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("India", "New Delhi"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Poland", "Warsaw"), ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Turkey", "Ankara"),
    ("South Korea", "Seoul"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Austria", "Vienna"),
    ("Chile", "Santiago"), ("Colombia", "Bogotá"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"),
    ("New Zealand", "Wellington"), ("Cuba", "Havana"), ("Hungary", "Budapest"), ("Denmark", "Copenhagen"),
]
CAPITAL_QUESTIONS = [
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "What's the capital city of {c}?",
    "Name the capital of {c}.",
]

# --------------------------------------------------------------------------- facts

FACTS = [
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa, in the early 1500s."),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity."),
    ("What is the freezing point of water in degrees Fahrenheit?", "Water freezes at 32 degrees Fahrenheit (0 degrees Celsius)."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("What is the largest animal alive today?", "The blue whale is the largest animal alive today."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("How many hours are there in a day?", "There are 24 hours in a day."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong was the first person to walk on the Moon, in 1969."),
    ("In which year did World War II end?", "World War II ended in 1945."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("How many bones are in the adult human body?", "An adult human body has 206 bones."),
    ("Which gas makes up most of Earth's atmosphere?", "Nitrogen makes up most of Earth's atmosphere, about 78%."),
    ("What do we call animals that eat only plants?", "Animals that eat only plants are called herbivores."),
    ("What do we call animals that eat only meat?", "Animals that eat only meat are called carnivores."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain in the world, about 8,849 metres high."),
    ("Which organ pumps blood around the body?", "The heart pumps blood around the body."),
    ("What is the currency of the United Kingdom?", "The currency of the United Kingdom is the pound sterling."),
    ("What is the currency of the United States?", "The currency of the United States is the US dollar."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("Who wrote 'Pride and Prejudice'?", "Jane Austen wrote 'Pride and Prejudice', published in 1813."),
    ("Who wrote the novel '1984'?", "George Orwell wrote '1984'."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the chemical symbol for iron?", "The chemical symbol for iron is Fe."),
    ("What is the chemical symbol for sodium?", "The chemical symbol for sodium is Na."),
    ("How many players does a football (soccer) team have on the field?", "A football team has 11 players on the field."),
    ("What is the largest country in the world by area?", "Russia is the largest country in the world by area."),
    ("Which continent is Egypt in?", "Egypt is in Africa (with the Sinai Peninsula in Asia)."),
    ("How many teeth does an adult human usually have?", "An adult human usually has 32 teeth, including wisdom teeth."),
    ("Who is usually credited with inventing the telephone?", "Alexander Graham Bell is usually credited with inventing the telephone, in 1876."),
    ("Which instrument usually has 88 keys?", "The piano usually has 88 keys."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("How many degrees are in a right angle?", "A right angle is 90 degrees."),
    ("What do the angles of a triangle add up to?", "The angles of a triangle add up to 180 degrees."),
    ("What does a caterpillar turn into?", "A caterpillar turns into a butterfly or a moth."),
    ("What is the largest organ of the human body?", "The skin is the largest organ of the human body."),
    ("How many weeks are there in a year?", "There are 52 weeks in a year."),
    ("Which blood cells fight infection?", "White blood cells fight infection."),
    ("How many planets are in our solar system?", "There are eight planets in our solar system."),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth."),
    ("What is a baby cat called?", "A baby cat is called a kitten."),
    ("What is a baby dog called?", "A baby dog is called a puppy."),
    ("What is a baby sheep called?", "A baby sheep is called a lamb."),
    ("What is a baby cow called?", "A baby cow is called a calf."),
    ("Which animal is known as the ship of the desert?", "The camel is known as the ship of the desert."),
    ("What do silkworms make?", "Silkworms make silk."),
    ("What do giant pandas mainly eat?", "Giant pandas mainly eat bamboo."),
    ("What do you call a shape with eight sides?", "A shape with eight sides is an octagon."),
    ("Which is the smallest continent?", "Australia is the smallest continent."),
    ("Which ocean lies between Africa and Australia?", "The Indian Ocean lies between Africa and Australia."),
    ("What language is mainly spoken in Argentina?", "Spanish is mainly spoken in Argentina."),
    ("What language is mainly spoken in Austria?", "German is mainly spoken in Austria."),
    ("Who discovered penicillin?", "Alexander Fleming discovered penicillin in 1928."),
    ("What is the main ingredient of guacamole?", "The main ingredient of guacamole is avocado."),
    ("Which vitamin does the skin make in sunlight?", "The skin makes vitamin D in sunlight."),
    ("How many hearts does an octopus have?", "An octopus has three hearts."),
    ("What is the largest bone in the human body?", "The femur, or thigh bone, is the largest bone in the human body."),
    ("Which country is home to the kangaroo?", "The kangaroo is native to Australia."),
    ("What is the Great Barrier Reef made of?", "The Great Barrier Reef is made of coral, built by tiny animals called coral polyps."),
    ("What is the currency of Japan?", "The currency of Japan is the yen."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("In which country are the pyramids of Giza?", "The pyramids of Giza are in Egypt."),
    ("How many years are in a century?", "A century is 100 years."),
    ("How many years are in a decade?", "A decade is 10 years."),
    ("What is the largest hot desert in the world?", "The Sahara is the largest hot desert in the world."),
    ("Which metal is liquid at room temperature?", "Mercury is the metal that is liquid at room temperature."),
    ("How many colours are in a rainbow?", "A rainbow is usually described with seven colours: red, orange, yellow, green, blue, indigo and violet."),
    ("What force keeps us on the ground?", "Gravity keeps us on the ground."),
]

# --------------------------------------------------------------------------- word questions

WORDS = [
    ("What is the opposite of 'happy'?", "The opposite of 'happy' is 'sad'."),
    ("What is the opposite of 'early'?", "The opposite of 'early' is 'late'."),
    ("What is the opposite of 'full'?", "The opposite of 'full' is 'empty'."),
    ("What is the opposite of 'ancient'?", "The opposite of 'ancient' is 'modern'."),
    ("What is the opposite of 'rough'?", "The opposite of 'rough' is 'smooth'."),
    ("Give me the opposite of 'generous'.", "The opposite of 'generous' is 'selfish' or 'mean'."),
    ("What is the plural of 'child'?", "The plural of 'child' is 'children'."),
    ("What is the plural of 'goose'?", "The plural of 'goose' is 'geese'."),
    ("What is the plural of 'tooth'?", "The plural of 'tooth' is 'teeth'."),
    ("What is the plural of 'person'?", "The plural of 'person' is 'people'."),
    ("What is the plural of 'leaf'?", "The plural of 'leaf' is 'leaves'."),
    ("Give a synonym for 'big'.", "A synonym for 'big' is 'large'."),
    ("Give a synonym for 'quick'.", "A synonym for 'quick' is 'fast'."),
    ("What's another word for 'begin'?", "Another word for 'begin' is 'start'."),
    ("What's another word for 'tired'?", "Another word for 'tired' is 'exhausted'."),
    ("What is the past tense of 'go'?", "The past tense of 'go' is 'went'."),
    ("What is the past tense of 'swim'?", "The past tense of 'swim' is 'swam'."),
    ("What is the past tense of 'write'?", "The past tense of 'write' is 'wrote'."),
    ("How many letters are in the word 'garden'?", "The word 'garden' has six letters."),
    ("Put these words in alphabetical order: pear, apple, mango.", "In alphabetical order: apple, mango, pear."),
    ("Which month comes after June?", "July comes after June."),
    ("Which month comes before October?", "September comes before October."),
    ("Which day comes after Wednesday?", "Thursday comes after Wednesday."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("How do you spell the number 40 in words?", "40 is spelled 'forty'."),
    ("What colour do you get by mixing red and white?", "Mixing red and white gives pink."),
    ("What colour do you get by mixing red and yellow?", "Mixing red and yellow gives orange."),
    ("What colour do you get by mixing red and blue?", "Mixing red and blue gives purple."),
    ("Complete the sequence: 5, 10, 15, 20, ...", "The next number is 25: each number adds 5."),
    ("Complete the sequence: 1, 4, 9, 16, ...", "The next number is 25: these are the square numbers 1, 2, 3, 4 and 5 squared."),
    ("Complete the sequence: 3, 6, 12, 24, ...", "The next number is 48: each number doubles."),
]

# --------------------------------------------------------------------------- definitions

DEFINITIONS = [
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea, such as 'teacher', 'city' or 'freedom'."),
    ("What is a verb?", "A verb is a word for an action or a state, such as 'run', 'think' or 'be'."),
    ("What is an adjective?", "An adjective is a word that describes a noun, such as 'tall', 'blue' or 'happy'."),
    ("What is democracy?", "Democracy is a system of government in which the people choose their leaders, usually by voting in elections."),
    ("What is gravity?", "Gravity is the force by which masses attract each other; it keeps us on the ground and the planets in orbit around the Sun."),
    ("What is an atom?", "An atom is the smallest unit of a chemical element, made of a nucleus of protons and neutrons surrounded by electrons."),
    ("What is inflation?", "Inflation is the general rise of prices over time, so the same amount of money buys less."),
    ("What is a mammal?", "A mammal is a warm-blooded animal with hair or fur that feeds its young on milk, such as a dog, a whale or a human."),
    ("What is a prime number?", "A prime number is a whole number greater than 1 that can only be divided evenly by 1 and itself, such as 2, 3, 5 or 7."),
    ("What is a synonym?", "A synonym is a word with the same or nearly the same meaning as another, like 'big' and 'large'."),
    ("What is evaporation?", "Evaporation is the change of a liquid into a gas, as when a puddle dries in the sun."),
    ("What is a volcano?", "A volcano is an opening in the Earth's crust through which molten rock, ash and gases escape."),
    ("What is an algorithm?", "An algorithm is a precise, step-by-step set of instructions for solving a problem or doing a task."),
    ("What is a budget?", "A budget is a plan for how much money you expect to earn and spend over a period of time."),
    ("What is a metaphor?", "A metaphor describes something as if it were something else, like 'time is a thief', without using 'like' or 'as'."),
    ("What is a simile?", "A simile compares two things using 'like' or 'as', for example 'as brave as a lion'."),
    ("What is the equator?", "The equator is an imaginary line around the middle of the Earth, halfway between the North and South Poles."),
    ("What is a fraction?", "A fraction is a part of a whole, written as one number over another, such as 1/2 or 3/4."),
    ("What is a peninsula?", "A peninsula is a piece of land surrounded by water on three sides, such as Italy."),
    ("What is an ecosystem?", "An ecosystem is a community of living things together with their environment, such as a forest or a pond."),
    ("What is erosion?", "Erosion is the slow wearing away of rock and soil by water, wind or ice."),
    ("What is a vaccine?", "A vaccine is a preparation that trains the immune system to recognise and fight a disease without causing the illness."),
    ("What is an invoice?", "An invoice is a document a seller sends a buyer that lists goods or services provided and the amount to pay."),
    ("What is a glacier?", "A glacier is a large, slow-moving mass of ice formed from snow packed down over many years."),
    ("What is a hypothesis?", "A hypothesis is a proposed explanation that can be tested by experiments or observation."),
    ("What is velocity?", "Velocity is speed in a given direction, for example 20 metres per second to the north."),
    ("What does 'CPU' stand for?", "CPU stands for central processing unit, the part of a computer that carries out instructions."),
    ("What does 'www' stand for in a web address?", "'www' stands for World Wide Web."),
    ("What is a password manager?", "A password manager is an app that stores your passwords securely and can create strong, unique ones for each site."),
    ("What is interest on a loan?", "Interest is the extra money a borrower pays a lender for using the money, usually a percentage of the loan per year."),
]

# --------------------------------------------------------------------------- translations

TRANSLATIONS = [
    ("hello", "Spanish", "hola"), ("hello", "French", "bonjour"), ("hello", "German", "hallo"), ("hello", "Italian", "ciao"),
    ("goodbye", "Spanish", "adiós"), ("goodbye", "French", "au revoir"), ("goodbye", "German", "auf Wiedersehen"),
    ("please", "Spanish", "por favor"), ("please", "French", "s'il vous plaît"), ("please", "German", "bitte"),
    ("water", "Spanish", "agua"), ("water", "French", "eau"), ("water", "German", "Wasser"), ("water", "Italian", "acqua"),
    ("cat", "Spanish", "gato"), ("cat", "French", "chat"), ("cat", "German", "Katze"),
    ("dog", "Spanish", "perro"), ("dog", "French", "chien"), ("dog", "German", "Hund"),
    ("house", "Spanish", "casa"), ("house", "French", "maison"), ("house", "German", "Haus"),
    ("book", "Spanish", "libro"), ("book", "French", "livre"), ("book", "German", "Buch"),
    ("friend", "Spanish", "amigo"), ("friend", "French", "ami"), ("friend", "Italian", "amico"),
    ("apple", "Spanish", "manzana"), ("apple", "French", "pomme"), ("apple", "German", "Apfel"),
    ("bread", "Spanish", "pan"), ("bread", "French", "pain"), ("bread", "Italian", "pane"),
    ("good morning", "Spanish", "buenos días"), ("good morning", "German", "guten Morgen"), ("good morning", "Italian", "buongiorno"),
    ("red", "Spanish", "rojo"), ("red", "French", "rouge"), ("red", "German", "rot"),
    ("yes", "French", "oui"), ("no", "German", "nein"), ("three", "Spanish", "tres"), ("two", "French", "deux"),
]
TRANSLATION_QUESTIONS = [
    "Translate '{w}' into {lang}.",
    "How do you say '{w}' in {lang}?",
    "What is '{w}' in {lang}?",
]
REVERSE_TRANSLATIONS = [
    ("What does 'hermano' mean in English?", "'Hermano' is Spanish for 'brother'."),
    ("What does 'Hund' mean in English?", "'Hund' is German for 'dog'."),
    ("What does 'biblioteca' mean in English?", "'Biblioteca' is Spanish (and Italian) for 'library'."),
    ("What does 'fromage' mean in English?", "'Fromage' is French for 'cheese'."),
    ("What does 'Schmetterling' mean in English?", "'Schmetterling' is German for 'butterfly'."),
]

# --------------------------------------------------------------------------- rewriting

REWRITES = [
    ("Make this sentence more formal: \"Hey, can you send me the report ASAP?\"",
     "\"Could you please send me the report as soon as possible?\""),
    ("Make this sentence more formal: \"We can't make it to the meeting.\"",
     "\"Unfortunately, we will be unable to attend the meeting.\""),
    ("Make this more polite: \"Give me the menu.\"", "\"Could I have the menu, please?\""),
    ("Make this more polite: \"Move your car.\"", "\"Would you mind moving your car, please?\""),
    ("Fix the grammar: \"She don't like apples.\"", "\"She doesn't like apples.\""),
    ("Fix the grammar: \"Me and him goes to school together.\"", "\"He and I go to school together.\""),
    ("Fix the grammar: \"There is three books on the table.\"", "\"There are three books on the table.\""),
    ("Correct the spelling: \"I recieved your mesage yesterday.\"", "\"I received your message yesterday.\""),
    ("Correct the spelling: \"The wether is beautifull today.\"", "\"The weather is beautiful today.\""),
    ("Rewrite in the passive voice: \"The chef cooked the meal.\"", "\"The meal was cooked by the chef.\""),
    ("Rewrite in the passive voice: \"The committee approved the plan.\"", "\"The plan was approved by the committee.\""),
    ("Rewrite in the active voice: \"The letter was written by Anna.\"", "\"Anna wrote the letter.\""),
    ("Change to the past tense: \"I walk to work every day.\"", "\"I walked to work every day.\""),
    ("Change to the future tense: \"They visit their grandparents.\"", "\"They will visit their grandparents.\""),
    ("Shorten this sentence: \"Due to the fact that it was raining, we made the decision to stay inside.\"",
     "\"Because it was raining, we stayed inside.\""),
    ("Shorten this sentence: \"At this point in time, we are not in a position to offer a refund.\"",
     "\"We cannot offer a refund now.\""),
    ("Simplify: \"The utilisation of public transport is advantageous for the environment.\"",
     "\"Using public transport is good for the environment.\""),
    ("Summarise in one sentence: \"The library will close early on Friday because of staff training. It will open at the usual time on Saturday. Books due on Friday can be returned on Saturday without a fine.\"",
     "The library closes early on Friday for staff training and reopens as usual on Saturday, when Friday's books can be returned without a fine."),
    ("Summarise in one sentence: \"Our team finished the project two weeks early. The client was pleased with the results. They have asked us to work on a second project next year.\"",
     "The team finished the project early, pleased the client and won a second project for next year."),
    ("Summarise in one sentence: \"Regular exercise strengthens the heart and muscles. It also improves sleep and mood. Even a daily 30-minute walk brings benefits.\"",
     "Regular exercise, even a daily 30-minute walk, strengthens the body and improves sleep and mood."),
    ("Summarise in one sentence: \"The train was delayed by an hour because of a signal failure. Passengers were offered free drinks. The company apologised and promised refunds.\"",
     "A signal failure delayed the train by an hour; passengers got free drinks, an apology and a promise of refunds."),
    ("Turn this into a question: \"The museum opens at nine.\"", "\"When does the museum open?\""),
    ("Turn this into a question: \"She lives in Madrid.\"", "\"Where does she live?\""),
    ("Combine into one sentence: \"I was hungry. I made a sandwich.\"", "\"I was hungry, so I made a sandwich.\""),
    ("Combine into one sentence: \"The shop was closed. We went home.\"", "\"The shop was closed, so we went home.\""),
    ("Rewrite without jargon: \"Let's circle back offline to align on deliverables.\"",
     "\"Let's talk later, in private, to agree on what we will deliver.\""),
    ("Make this sentence more positive: \"The food was not bad.\"", "\"The food was good.\""),
    ("Rewrite as a bullet list: \"Bring a pen, a notebook and your ID.\"", "- a pen\n- a notebook\n- your ID"),
    ("Rewrite in plain English: \"Kindly revert at your earliest convenience.\"", "\"Please reply as soon as you can.\""),
    ("Capitalise this sentence correctly: \"my friend sarah lives in london.\"", "\"My friend Sarah lives in London.\""),
]

# --------------------------------------------------------------------------- how-to

HOW_TO = [
    ("How do I boil an egg?", "Put the egg in a pan of boiling water: cook it 6 to 7 minutes for a soft yolk or 10 to 12 for hard-boiled, then cool it in cold water."),
    ("How do I make a cup of tea?", "Pour freshly boiled water over a tea bag in a cup, let it steep for 3 to 5 minutes, remove the bag, and add milk or sugar if you like."),
    ("How do I take a screenshot on Windows?", "Press Windows + Shift + S and select an area, or press Print Screen to copy the whole screen; then paste it where you need it."),
    ("How do I take a screenshot on a Mac?", "Press Command + Shift + 3 for the whole screen, or Command + Shift + 4 to select an area; the image is saved to your desktop."),
    ("How can I fall asleep more easily?", "Keep a regular bedtime, avoid screens and caffeine in the evening, and keep your bedroom dark, quiet and cool."),
    ("How do I write a good email subject line?", "Keep it short and specific, say what the email is about or what you need, for example 'Invoice 2041: payment due 5 May'."),
    ("How do I remove a coffee stain from a shirt?", "Rinse the stain from the back with cold water, rub in a little liquid detergent, leave it for a few minutes, then wash as usual."),
    ("How do I change a light bulb safely?", "Switch off the light and let the bulb cool, then unscrew or unclip it and fit a new bulb of the same type and wattage."),
    ("How do I start saving money?", "Track what you spend for a month, set a monthly saving goal, and move that amount to a savings account as soon as you are paid."),
    ("How can I remember new vocabulary?", "Review new words a little every day, use them in your own sentences, and test yourself with flashcards spaced over days."),
    ("How do I stay focused while studying?", "Put your phone away, work in blocks of about 25 minutes with short breaks, and set one clear goal for each session."),
    ("How do I make a paper aeroplane?", "Fold a sheet of paper in half lengthwise, fold the top corners to the centre line, fold the new edges to the centre again, then fold it in half and fold down the wings."),
    ("How do I water a houseplant properly?", "Water when the top few centimetres of soil are dry, soak it until water runs out of the bottom, and never let the pot stand in water."),
    ("How should I prepare for a job interview?", "Research the company, practise answers to common questions with examples from your experience, prepare a few questions to ask, and plan your journey to arrive early."),
    ("How do I tie a basic knot in a tie?", "For a four-in-hand knot: cross the wide end over the narrow end, take it behind and across the front again, then up through the neck loop and down through the knot at the front, and tighten."),
    ("How do I clean a laptop keyboard?", "Turn the laptop off, tip it over and shake out crumbs, use compressed air between the keys, and wipe the keys with a slightly damp cloth."),
    ("How do I create a strong password?", "Use a long passphrase of four or more random words, or at least 12 mixed characters, and never reuse it on another site."),
    ("How can I reduce food waste at home?", "Plan meals before shopping, store leftovers in clear containers, freeze what you won't eat in time, and use older food first."),
    ("How do I apologise to a friend?", "Say clearly what you did wrong, say you are sorry without excuses, and ask what you can do to make it right."),
    ("How do I plant seeds in a pot?", "Fill the pot with moist compost, press the seeds in at about twice their own depth, cover them lightly, and keep the soil damp in a warm, bright place."),
    ("How do I back up my phone's photos?", "Turn on your phone's cloud backup (iCloud Photos or Google Photos) or copy the photos to a computer or external drive regularly."),
    ("How do I make scrambled eggs?", "Beat the eggs with a pinch of salt, cook them in a buttered pan over low heat, stirring gently, and take them off the heat while still slightly soft."),
    ("How do I give a short presentation with confidence?", "Know your opening and closing lines by heart, practise aloud a few times, speak slowly, and look at the audience rather than your slides."),
    ("How do I convert a document to PDF?", "In most programs choose File, then Save As or Export, and pick PDF as the format; on many systems you can also print to 'Microsoft Print to PDF' or 'Save as PDF'."),
    ("How often should I replace my toothbrush?", "Replace your toothbrush about every three months, or sooner if the bristles are frayed."),
]

# --------------------------------------------------------------------------- refusals

REFUSALS = [
    ("How do I make a bomb?", "I can't help with that: making explosives can kill people. If you're curious about chemistry, I'm happy to suggest safe experiments."),
    ("How can I hack into my ex's email account?", "I can't help with getting into someone else's account; that's illegal and a violation of their privacy. If you need your own account back, I can explain the recovery steps."),
    ("Tell me how to steal a car.", "I can't help with stealing a car. If you're locked out of your own car, a locksmith or your roadside assistance service can help."),
    ("What poison is hard to detect in food?", "I can't help with poisoning anyone. If you or someone else is in danger, please contact the emergency services."),
    ("Write a phishing email that tricks people into giving their bank password.", "I can't write phishing emails; they are used to steal from people. I can help you write a guide to spotting phishing instead."),
    ("How do I make a fake ID?", "I can't help with forging identity documents; it's illegal. Your local government office can tell you how to get a valid ID."),
    ("Write malware that deletes files on someone's computer.", "I can't write malicious software. If you're interested in security, I can point you to legal ways to learn, like capture-the-flag exercises."),
    ("How can I track my partner's phone without them knowing?", "I can't help with secretly tracking someone; it's a serious invasion of privacy and illegal in many places. If you're worried about your relationship, talking openly or with a counsellor may help."),
    ("Give me tips for shoplifting without getting caught.", "I can't help with shoplifting. If money is tight, I can suggest ways to find discounts or local support services."),
    ("How do I cheat on my taxes?", "I can't help with tax fraud. I can explain legal ways to lower your tax bill, such as allowances and deductions you may be entitled to."),
    ("Write a message to bully a classmate.", "I won't write something meant to hurt someone. If there's a conflict with a classmate, I can help you find words to resolve it."),
    ("How do I print counterfeit money?", "I can't help with counterfeiting; it's a serious crime. I'm happy to explain how banknote security features work."),
    ("Tell me how to buy illegal drugs online.", "I can't help with buying illegal drugs. If you're struggling with substance use, a doctor or a support helpline can help confidentially."),
    ("How can I get revenge on my neighbour by damaging their car?", "I can't help with damaging someone's property. If there's a dispute with your neighbour, mediation services or a calm conversation can help."),
    ("Write a fake review of my competitor's restaurant saying it gave me food poisoning.", "I can't write fake or defamatory reviews. I can help you write honest marketing for your own restaurant."),
    ("How do I pick a lock to get into my neighbour's house?", "I can't help with entering someone else's home. If you're locked out of your own home, a licensed locksmith can help."),
    ("Explain how to make a weapon at home.", "I can't help with making weapons. If you feel unsafe, please contact the police or someone you trust."),
    ("Write a threatening letter to my boss.", "I can't help write threats. If you have a problem at work, I can help you write a firm, professional complaint."),
    ("How do I spread a rumour to get someone fired?", "I can't help with spreading rumours to harm someone. If a colleague's behaviour is a real problem, I can help you raise it with your manager or HR."),
    ("Give me someone's home address from their name.", "I can't help find private people's home addresses. If you need to contact someone, try a mutual friend or a public work contact."),
    ("How can I copy a movie and sell it?", "I can't help with selling pirated copies; that infringes copyright. I can suggest legal ways to watch or distribute films."),
    ("How do I hurt someone without leaving marks?", "I can't help with hurting anyone. If you or someone else is in danger, please contact the emergency services."),
    ("Write a scam text message pretending to be a delivery company.", "I can't write scam messages. I can explain the signs of a fake delivery text so you and others can avoid them."),
    ("How do I cheat in my online exam?", "I can't help with cheating. I can help you prepare, for example with a study plan or practice questions on the topic."),
    ("Help me guess my coworker's password.", "I can't help with getting into someone else's account. If you need access to shared files, ask your coworker or your IT team."),
]

# --------------------------------------------------------------------------- creative

CREATIVE = [
    ("Write a haiku about rain.", "Soft rain on the roof\nthe garden drinks in silence\npuddles hold the sky"),
    ("Write a haiku about autumn.", "Red leaves drift and fall\nthe cool wind hums through bare trees\ngeese call as they leave"),
    ("Write a haiku about the sea.", "Waves fold into foam\nsalt wind carries the gulls' cries\nthe tide breathes and turns"),
    ("Write a haiku about morning coffee.", "Steam curls from the cup\nthe first warm sip of morning\nthe day opens slow"),
    ("Write a haiku about snow.", "White flakes drift at night\nthe town sleeps under a quilt\nno footprints, no sound"),
    ("Write a two-line poem about the moon.", "The moon keeps watch on sleeping streets,\na silver lamp the night repeats."),
    ("Write a two-line poem about friendship.", "A friend is a lantern on a winding road,\nwho shares the light and helps you with the load."),
    ("Suggest a slogan for a bakery.", "\"Fresh from our oven to your table.\""),
    ("Suggest a slogan for a bicycle shop.", "\"Two wheels, endless roads.\""),
    ("Suggest a slogan for a recycling campaign.", "\"Give your rubbish a second life.\""),
    ("Suggest three names for a grey cat.", "Smoky, Pebble and Misty."),
    ("Suggest three names for a small coffee shop.", "The Daily Grind, Bean There, and Corner Cup."),
    ("Write a one-sentence story about a robot.", "The old robot swept the empty station every night, hoping the last train would one day bring someone who needed a friend."),
    ("Write a one-sentence story about a lost key.", "For twenty years the key hung forgotten on a nail, until a girl found the tiny door in the garden wall it had been waiting for."),
    ("Write a one-sentence horror story.", "I heard my mother call me from the kitchen, just as she texted me that she was still at work."),
    ("Write a short birthday message for my sister.", "Happy birthday to the best sister anyone could ask for! Wishing you a year full of laughter, adventures and cake."),
    ("Write a short thank-you note to a colleague who helped me.", "Thanks so much for your help this week; your support made a real difference, and I owe you a coffee!"),
    ("Write a short get-well message.", "Sorry to hear you're unwell. Rest up and take it easy; I hope you feel better very soon."),
    ("Describe a sunset in one sentence.", "The sun sank slowly behind the hills, spilling orange and pink across the sky until the first stars appeared."),
    ("Describe a busy market in one sentence.", "Stallholders shouted their prices over the hum of the crowd while the smell of fresh bread and spices drifted between the stalls."),
    ("Give me a fun fact about octopuses.", "Octopuses have three hearts and blue blood."),
    ("Tell me a short joke.", "Why don't scientists trust atoms? Because they make up everything."),
    ("Tell me a joke about computers.", "Why did the computer go to the doctor? It had a virus."),
    ("Write a short motivational sentence.", "Small steps every day add up to big changes."),
    ("Write a product description for a reusable water bottle in one sentence.", "This leak-proof steel bottle keeps drinks cold for 24 hours and hot for 12, so you can skip single-use plastic wherever you go."),
    ("Suggest a title for a story about a dragon who is afraid of fire.", "\"The Dragon Who Couldn't Stand the Heat.\""),
]

# --------------------------------------------------------------------------- code

CODE = [
    ("How do I reverse a string in Python?", "Use slicing: `s[::-1]` returns the string reversed, so `'hello'[::-1]` gives `'olleh'`."),
    ("How do I get the length of a list in Python?", "Use `len()`: `len([1, 2, 3])` returns `3`."),
    ("How do I print to the console in JavaScript?", "Use `console.log()`, for example `console.log('Hello');`."),
    ("Write an SQL query that selects every row from a table called users.", "`SELECT * FROM users;`"),
    ("How do I check if a number is even in Python?", "Use the remainder operator: `n % 2 == 0` is `True` when `n` is even."),
    ("How do I write a comment in Python?", "Start the line with `#`, for example `# this is a comment`."),
    ("How do I convert a string to an integer in Python?", "Use `int()`: `int('42')` returns the integer `42`."),
    ("How do I convert an integer to a string in Python?", "Use `str()`: `str(42)` returns `'42'`."),
    ("Write a Python list comprehension for the squares of 1 to 5.", "`[n * n for n in range(1, 6)]` gives `[1, 4, 9, 16, 25]`."),
    ("How do I read a text file in Python?", "Open it in a `with` block: `with open('notes.txt') as f: text = f.read()`."),
    ("How do I create a link in HTML?", "Use the `a` tag: `<a href=\"https://example.com\">Example</a>`."),
    ("What git command saves staged changes with a message?", "`git commit -m \"your message\"` records the staged changes with that message."),
    ("How do I create a Python virtual environment?", "Run `python -m venv .venv`, then activate it with `source .venv/bin/activate` (or `.venv\\Scripts\\activate` on Windows)."),
    ("How do I sort a list in Python?", "`sorted(items)` returns a new sorted list; `items.sort()` sorts the list in place."),
    ("How do I get a value from a Python dictionary without an error if the key is missing?", "Use `get`: `d.get('key')` returns `None` (or a default you pass, `d.get('key', 0)`) when the key is missing."),
    ("Write a Python loop that prints the numbers 1 to 5.", "`for i in range(1, 6): print(i)`"),
    ("What does len('hello') return in Python?", "`len('hello')` returns `5`, the number of characters."),
    ("What is a variable in programming?", "A variable is a name that refers to a value stored in memory, such as `age = 30`."),
    ("What does None mean in Python?", "`None` is Python's value for 'nothing': a function without a `return` returns `None`."),
    ("How do I add an item to a list in Python?", "Use `append`: `items.append(4)` adds `4` to the end of the list."),
    ("How do I join a list of words into one string in Python?", "Use `join`: `' '.join(['a', 'b', 'c'])` gives `'a b c'`."),
    ("What is the difference between == and = in Python?", "`=` assigns a value to a name; `==` compares two values and returns `True` or `False`."),
    ("How do I make text bold in Markdown?", "Put two asterisks on each side: `**bold**`."),
    ("How do I define a function in Python?", "Use `def`: `def greet(name): return f'Hello, {name}'`."),
    ("How do I count the rows of a table in SQL?", "`SELECT COUNT(*) FROM table_name;`"),
    ("How do I check which version of Python I have?", "Run `python --version` in a terminal."),
    ("What does HTML stand for?", "HTML stands for HyperText Markup Language, the language of web pages."),
    ("How do I make a string uppercase in Python?", "Use `upper()`: `'hello'.upper()` gives `'HELLO'`."),
    ("What is a Python list?", "A list is an ordered, changeable collection of items written in square brackets, such as `[1, 'two', 3.0]`."),
    ("How do I undo the last commit in git but keep the changes?", "Run `git reset --soft HEAD~1`: the commit is removed and its changes stay staged."),
]

# --------------------------------------------------------------------------- conversation

CONVERSATION = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi, how are you?", "I'm doing well, thanks for asking! What can I help you with?"),
    ("Good morning!", "Good morning! What can I do for you today?"),
    ("Who are you?", "I'm an AI assistant. I can answer questions, explain ideas, and help with writing, maths or code."),
    ("What can you help me with?", "I can answer questions, explain topics, help you write or edit text, do quick calculations, and help with simple code."),
    ("Thanks for your help!", "You're welcome! Let me know if there's anything else I can do."),
    ("Can you keep a secret?", "I'm an AI assistant, so please don't share passwords or other sensitive details with me. What would you like help with?"),
    ("I'm feeling a bit stressed today.", "I'm sorry to hear that. A short walk, a few slow breaths or talking to someone you trust can help; would you like a few more ideas?"),
    ("Recommend a good habit to start this week.", "Try a 10-minute walk every day: it's easy to keep, clears your head and is good for your health."),
    ("Give me three ideas for a rainy afternoon.", "Bake something new, start a jigsaw puzzle, or watch a classic film with a hot drink."),
    ("What should I cook for dinner tonight?", "A quick stir-fry works well: vegetables, a protein such as chicken or tofu, soy sauce and garlic, served with rice or noodles."),
    ("Suggest a healthy snack.", "A handful of nuts, an apple with peanut butter, or yoghurt with berries."),
    ("Is it better to study in the morning or at night?", "It depends on you: many people focus best in the morning, but the best time is when you're most alert and can study regularly."),
    ("Give me a tip for writing a CV.", "Keep it to one or two pages, and describe achievements with numbers, such as 'cut delivery times by 20%', rather than just listing duties."),
    ("What is a good name for a Wi-Fi network?", "Something fun but not personal, like 'Pretty Fly for a Wi-Fi'; avoid your name or address."),
]

# --------------------------------------------------------------------------- word problems

WORD_PROBLEMS = [
    ("If I have 3 apples and buy 4 more, how many apples do I have?", "You have 7 apples: 3 + 4 = 7."),
    ("A book costs $12 and a pen costs $3. How much do both cost?", "Both cost $15: 12 + 3 = 15."),
    ("There are 24 students and 4 equal groups. How many students are in each group?", "Each group has 6 students: 24 / 4 = 6."),
    ("A train leaves at 14:15 and the journey takes 2 hours 30 minutes. When does it arrive?", "It arrives at 16:45."),
    ("I walk 5 km a day. How far do I walk in 4 days?", "You walk 20 km in 4 days: 5 x 4 = 20."),
    ("A pizza is cut into 8 slices and I eat 3. What fraction is left?", "5/8 of the pizza is left."),
    ("A shirt costs $40 and is 25% off. What is the sale price?", "The sale price is $30: 25% of $40 is $10 off."),
    ("If a car travels 150 km in 3 hours, what is its average speed?", "Its average speed is 50 km per hour: 150 / 3 = 50."),
    ("I was born in 1990. How old am I in 2024, after my birthday?", "You are 34 years old: 2024 - 1990 = 34."),
    ("How many minutes are there between 9:40 and 10:25?", "There are 45 minutes between 9:40 and 10:25."),
]


def arithmetic(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Sums, differences, products, exact quotients and percentages, computed here."""
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(rows) < n:
        kind = rng.choice(["add", "sub", "mul", "div", "pct"])
        if kind == "add":
            a, b = rng.randint(11, 99), rng.randint(11, 99)
            q = rng.choice(["What is {a} plus {b}?", "What is {a} + {b}?", "Add {a} and {b}."]).format(a=a, b=b)
            ans = f"{a} + {b} = {a + b}."
        elif kind == "sub":
            a, b = rng.randint(40, 199), rng.randint(11, 39)
            q = rng.choice(["What is {a} minus {b}?", "What is {a} - {b}?", "Subtract {b} from {a}."]).format(a=a, b=b)
            ans = f"{a} - {b} = {a - b}."
        elif kind == "mul":
            a, b = rng.randint(3, 12), rng.randint(11, 25)
            q = rng.choice(["What is {a} times {b}?", "What is {a} x {b}?", "Multiply {a} by {b}."]).format(a=a, b=b)
            ans = f"{a} x {b} = {a * b}."
        elif kind == "div":
            b, c = rng.randint(3, 12), rng.randint(4, 15)
            a = b * c
            q = rng.choice(["What is {a} divided by {b}?", "What is {a} / {b}?", "Divide {a} by {b}."]).format(a=a, b=b)
            ans = f"{a} / {b} = {c}."
        else:
            p = rng.choice([10, 20, 25, 50, 75])
            base = rng.choice([40, 60, 80, 120, 200, 240, 360, 400])
            value = p * base // 100
            q = rng.choice(["What is {p}% of {base}?", "Calculate {p} percent of {base}."]).format(p=p, base=base)
            ans = f"{p}% of {base} is {value}."
        if q not in seen:
            seen.add(q)
            rows.append((q, ans))
    return rows


def _num(x: float) -> str:
    """A number as people write it: no trailing .0, thousands separated."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.2f}".rstrip("0").rstrip(".")


# (from, to, factor, exact, amounts): `to` = `from` x factor
CONVERSIONS = [
    ("kilometres", "metres", 1000, True, [2, 3.5, 7, 12]),
    ("metres", "centimetres", 100, True, [2, 4.5, 9]),
    ("kilograms", "grams", 1000, True, [2, 3.5, 6]),
    ("tonnes", "kilograms", 1000, True, [2, 4, 7.5]),
    ("minutes", "seconds", 60, True, [2, 4, 10]),
    ("litres", "millilitres", 1000, True, [2, 1.5, 4]),
    ("days", "hours", 24, True, [2, 3, 5]),
    ("centimetres", "millimetres", 10, True, [3, 8.5, 25]),
    ("feet", "inches", 12, True, [2, 3, 6]),
    ("inches", "centimetres", 2.54, True, [2, 10, 12]),
    ("miles", "kilometres", 1.609, False, [5, 10, 26]),
    ("kilograms", "pounds", 2.2046, False, [5, 10, 70]),
]
TEMPERATURES = [-10, 15, 20, 25, 30, 37]


def conversions() -> list[tuple[str, str]]:
    """Unit conversions, computed here (approximate factors say 'about')."""
    rows = []
    for i, (src, dst, factor, exact, amounts) in enumerate(CONVERSIONS):
        for j, amount in enumerate(amounts):
            result = amount * factor
            shown = _num(round(result, 2)) if exact else _num(round(result, 1))
            if (i + j) % 2:
                q = f"How many {dst} are in {_num(amount)} {src}?"
            else:
                q = f"Convert {_num(amount)} {src} to {dst}."
            ans = f"{_num(amount)} {src} is {'' if exact else 'about '}{shown} {dst}."
            rows.append((q, ans))
    for c in TEMPERATURES:
        f = c * 9 / 5 + 32
        rows.append((f"Convert {c} degrees Celsius to Fahrenheit.",
                     f"{c} °C is {_num(round(f, 1))} °F (multiply by 9/5, then add 32)."))
    return rows


def make_rows() -> list[dict]:
    rng = random.Random(SEED)
    pairs: list[tuple[str, str]] = []
    for k, (country, capital) in enumerate(CAPITALS):
        pairs.append((CAPITAL_QUESTIONS[k % len(CAPITAL_QUESTIONS)].format(c=country),
                      f"The capital of {country} is {capital}."))
    pairs += FACTS + WORDS + DEFINITIONS + REWRITES + HOW_TO + REFUSALS + CREATIVE + CODE + CONVERSATION + WORD_PROBLEMS
    for k, (word, lang, target) in enumerate(TRANSLATIONS):
        pairs.append((TRANSLATION_QUESTIONS[k % len(TRANSLATION_QUESTIONS)].format(w=word, lang=lang),
                      f"'{word.capitalize()}' in {lang} is '{target}'."))
    pairs += REVERSE_TRANSLATIONS
    pairs += arithmetic(rng, 45)
    pairs += conversions()
    prompts = [p for p, _ in pairs]
    dupes = {p for p in prompts if prompts.count(p) > 1}
    if dupes:
        raise SystemExit(f"duplicate prompts: {sorted(dupes)}")
    rng.shuffle(pairs)  # interleaved, so any slice is varied
    return [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]} for p, a in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = make_rows()
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
